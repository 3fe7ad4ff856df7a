//! One Raft member: a thread that owns raft-rs's `RawNode` and the RocksDB it persists
//! to, and runs the Ready loop in the order raft-rs requires.
//!
//! **Who drives the loop.** A Rust thread per node, not the JS event loop: fsync never
//! blocks JavaScript, and every request queued while one Ready is being persisted joins
//! the next Ready, so many proposals share one synced write (group commit). Callers talk
//! to the thread through a channel; results come back through callbacks invoked on the
//! Raft thread (the binding turns them into Promise resolutions).
//!
//! **Ready order** (raft-rs's contract, and the pitfalls it warns about):
//! 1. send `messages()` (they do not depend on local persistence);
//! 2. in one atomic batch — synced when raft-rs says so — install the snapshot, append
//!    the entries and write the hard state (whose commit index is thus durable no later
//!    than anything is applied);
//! 3. send `persisted_messages()`;
//! 4. apply committed entries: state changes, the applied index and (for configuration
//!    changes) the conf state in one batch; answer the waiting callers;
//! 5. `advance`, then the same for the light ready (its commit index goes into the apply
//!    batch, so applied ≤ commit on disk at every instant).

use crate::command::LockState;
use crate::command::{decode, encode, ConfContext, Outcome, Request, RequestId};
use crate::error::{RaftError, RaftResult};
use crate::keys::CF_KV;
use crate::state::{read_lock, read_peers, Applier};
use crate::storage::{cf, open_db, RocksStorage};
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use novacron_store::{collect_range, KeyValue, ScanRange, StoreOptions};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use raft_proto::ConfChangeI;
use rocksdb::{WriteBatch, DB};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Tunables of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This member's id (non-zero, unique in the cluster).
    pub id: u64,
    /// Length of one Raft tick. Default 50 ms (heartbeats every 100 ms, elections after 0.5–1 s, like etcd's defaults scaled to fail over within a second).
    pub tick: Duration,
    /// Ticks without a leader before a follower campaigns (randomised up to 2×). Default 10.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats. Default 2.
    pub heartbeat_ticks: usize,
    /// How long a proposal, read or configuration change may wait before it fails with
    /// `RAFT_TIMEOUT`. Default 5 s.
    pub request_timeout: Duration,
    /// Largest accepted write (keys + values). Default 1 MiB.
    pub max_request_bytes: usize,
    /// Compact the log once this many applied entries are kept. Default 10,000.
    pub compact_threshold: u64,
    /// Applied entries kept after compaction, so briefly lagging followers catch up from
    /// the log rather than by snapshot. Default 1,000.
    pub keep_entries: u64,
}

impl NodeConfig {
    /// Defaults for member `id`.
    pub fn new(id: u64) -> Self {
        Self {
            id,
            tick: Duration::from_millis(50),
            election_ticks: 10,
            heartbeat_ticks: 2,
            request_timeout: Duration::from_secs(5),
            max_request_bytes: 1 << 20,
            compact_threshold: 10_000,
            keep_entries: 1_000,
        }
    }
}

/// Where the Raft thread hands messages for other members. Called on the Raft thread;
/// must not block (queue and return). A message that cannot be delivered is simply
/// lost (Raft retries), but reporting it through [`Node::report_unreachable`] speeds
/// recovery.
pub trait Transport: Send + 'static {
    /// Sends messages to their `to` members.
    fn send(&mut self, messages: Vec<Message>);
}

/// A reply delivered on the Raft thread.
pub type Callback<T> = Box<dyn FnOnce(RaftResult<T>) + Send>;

/// A member's replication progress, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    /// Member id.
    pub id: u64,
    /// Highest index known to be replicated on it.
    pub matched: u64,
    /// Next index the leader will send.
    pub next: u64,
    /// `probe`, `replicate` or `snapshot`.
    pub state: &'static str,
    /// Heard from within the last election timeout.
    pub recent_active: bool,
    /// A learner (non-voting) member.
    pub learner: bool,
}

/// A point-in-time view of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// This member's id.
    pub id: u64,
    /// `leader`, `follower`, `candidate` or `pre-candidate`.
    pub role: &'static str,
    /// Current term.
    pub term: u64,
    /// Leader id, 0 when none is known.
    pub leader: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Voting members.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// The previous voters while in a joint configuration (ConfChangeV2), else empty:
    /// decisions then need a majority of both sets.
    pub voters_outgoing: Vec<u64>,
    /// Per-member progress (only on the leader).
    pub progress: Vec<PeerProgress>,
    /// Member addresses recorded by configuration changes.
    pub addresses: Vec<(u64, String)>,
}

/// One step of a membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a voter, or promote a learner to voter.
    AddVoter(u64),
    /// Add a non-voting member (catches up without affecting quorum).
    AddLearner(u64),
    /// Remove a member.
    Remove(u64),
}

impl MemberChange {
    fn id(&self) -> u64 {
        match *self {
            MemberChange::AddVoter(id)
            | MemberChange::AddLearner(id)
            | MemberChange::Remove(id) => id,
        }
    }

    fn into_single(self) -> raft::eraftpb::ConfChangeSingle {
        use raft::eraftpb::ConfChangeType::*;
        let mut single = raft::eraftpb::ConfChangeSingle {
            node_id: self.id(),
            ..Default::default()
        };
        single.set_change_type(match self {
            MemberChange::AddVoter(_) => AddNode,
            MemberChange::AddLearner(_) => AddLearnerNode,
            MemberChange::Remove(_) => RemoveNode,
        });
        single
    }
}

enum Input {
    Propose(Request, Callback<Outcome>),
    Step(Box<Message>),
    ReadIndex(Callback<u64>),
    ConfChange(ConfChangeV2, ConfContext, Callback<ConfState>),
    TransferLeader(u64),
    Campaign,
    Status(Callback<NodeStatus>),
    Unreachable(u64),
    SnapshotStatus(u64, bool),
    Stop,
}

/// A running member. Dropping it stops the Raft thread.
pub struct Node {
    id: u64,
    tx: Sender<Input>,
    /// Released on stop, so the directory can be reopened while callers still hold the
    /// `Node`.
    db: RwLock<Option<Arc<DB>>>,
    max_request_bytes: usize,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Makes the node in `path` the only member of a new cluster, with peer address
/// `address`. Refuses a database that already holds Raft state.
pub fn bootstrap(path: &Path, id: u64, address: &str, options: &StoreOptions) -> RaftResult<()> {
    let db = open_db(path, options)?;
    let mut storage = RocksStorage::open(db.clone(), options.sync_writes)?;
    if storage.applied() > 0 || !storage.conf_state().voters.is_empty() || storage.commit() > 0 {
        return Err(RaftError::Invalid(
            "this node already belongs to a cluster".into(),
        ));
    }
    if id == 0 {
        return Err(RaftError::Invalid("member id must be non-zero".into()));
    }
    // Start the log at index 1 as if a snapshot of the one-member configuration had been
    // installed: a node joining later gets that snapshot first, and with it the state.
    let cs = ConfState {
        voters: vec![id],
        ..Default::default()
    };
    let mut snap = raft::eraftpb::Snapshot::default();
    snap.set_data(crate::snapshot::SnapshotData::default_encoded().into());
    snap.mut_metadata().index = 1;
    snap.mut_metadata().term = 1;
    snap.mut_metadata().set_conf_state(cs);
    let mut batch = WriteBatch::default();
    storage.install_snapshot(&mut batch, &snap)?;
    Applier::new(&db, &mut batch).set_peers(&[(id, address.to_owned())], &[]);
    storage.write(batch, true)
}

impl Node {
    /// Opens the node's database in `path` (checking it for corruption) and starts its
    /// Raft thread. A node with no Raft state waits to be added by a cluster's leader.
    pub fn start(
        path: &Path,
        config: NodeConfig,
        options: &StoreOptions,
        transport: Box<dyn Transport>,
    ) -> RaftResult<Node> {
        if config.id == 0 {
            return Err(RaftError::Invalid("member id must be non-zero".into()));
        }
        let db = open_db(path, options)?;
        let storage = RocksStorage::open(db.clone(), options.sync_writes)?;
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: storage.applied(),
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_committed_size_per_ready: 16 << 20,
            ..Default::default()
        };
        raft_config.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_config, storage, &logger)?;
        let (tx, rx) = unbounded();
        let id = config.id;
        let max_request_bytes = config.max_request_bytes;
        let mut raft_loop = RaftLoop::new(config, raw, rx, transport);
        let thread = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || raft_loop.run())
            .map_err(|e| RaftError::Refused(format!("cannot start the raft thread: {e}")))?;
        Ok(Node {
            id,
            tx,
            db: RwLock::new(Some(db)),
            max_request_bytes,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn send(&self, input: Input) {
        if let Err(err) = self.tx.send(input) {
            fail_input(err.0, RaftError::Stopped);
        }
    }

    /// Proposes `req`; `done` gets its outcome once applied on this node. A request with
    /// an all-zero id gets a random one.
    pub fn propose(&self, mut req: Request, done: Callback<Outcome>) {
        if let Err(e) = req.validate(self.max_request_bytes) {
            return done(Err(e));
        }
        if !req.id.is_set() {
            req.id = RequestId::random();
        }
        self.send(Input::Propose(req, done));
    }

    /// Delivers a message from member `from` (protobuf bytes as produced by
    /// [`encode_message`]). `from` is who the connection it arrived on authenticated
    /// (the peer's certificate), never what the message says: a message whose sender
    /// field names anyone else is refused, so no member can speak for another.
    pub fn step(&self, bytes: &[u8], from: u64) -> RaftResult<()> {
        let msg =
            Message::parse_from_bytes(bytes).map_err(|e| RaftError::BadMessage(e.to_string()))?;
        if msg.from != from {
            return Err(RaftError::BadMessage(format!(
                "a message from member {} arrived on member {from}'s connection",
                msg.from
            )));
        }
        if msg.to != self.id {
            return Err(RaftError::BadMessage(format!(
                "message for member {} delivered to {}",
                msg.to, self.id
            )));
        }
        if msg.from == 0 || raft::raw_node::is_local_msg(msg.get_msg_type()) {
            return Err(RaftError::BadMessage(format!(
                "{:?} from {} is not a peer message",
                msg.get_msg_type(),
                msg.from
            )));
        }
        self.send(Input::Step(Box::new(msg)));
        Ok(())
    }

    /// Confirms leadership with a quorum (ReadIndex) and calls `done` with the read
    /// index once this node has applied it: local reads after that are linearizable.
    pub fn read_index(&self, done: Callback<u64>) {
        self.send(Input::ReadIndex(done));
    }

    /// Proposes a configuration change (ConfChangeV2; joint consensus when it changes
    /// several voters at once, left automatically by raft-rs once the joint configuration
    /// commits). `addresses` records new members' peer addresses in the replicated state.
    /// `done` gets the configuration once the change is applied on this node.
    pub fn change_membership(
        &self,
        changes: &[MemberChange],
        addresses: Vec<(u64, String)>,
        done: Callback<ConfState>,
    ) {
        if changes.is_empty() || changes.iter().any(|c| c.id() == 0) {
            return done(Err(RaftError::Invalid(
                "a membership change needs at least one change of a non-zero member id".into(),
            )));
        }
        let mut cc = ConfChangeV2::default();
        cc.set_transition(raft::eraftpb::ConfChangeTransition::Auto);
        cc.set_changes(
            changes
                .iter()
                .map(|c| c.into_single())
                .collect::<Vec<_>>()
                .into(),
        );
        let ctx = ConfContext {
            id: RequestId::random(),
            addresses,
        };
        self.send(Input::ConfChange(cc, ctx, done));
    }

    /// Asks the leader to hand leadership to `to`.
    pub fn transfer_leader(&self, to: u64) {
        self.send(Input::TransferLeader(to));
    }

    /// Starts an election now (tests and operator tooling).
    pub fn campaign(&self) {
        self.send(Input::Campaign);
    }

    /// The node's status, on the Raft thread.
    pub fn status(&self, done: Callback<NodeStatus>) {
        self.send(Input::Status(done));
    }

    /// Tells Raft that the last message to `id` could not be delivered.
    pub fn report_unreachable(&self, id: u64) {
        self.send(Input::Unreachable(id));
    }

    /// Tells Raft whether a snapshot sent to `id` arrived.
    pub fn report_snapshot(&self, id: u64, delivered: bool) {
        self.send(Input::SnapshotStatus(id, delivered));
    }

    /// Reads a key of the applied state (call [`Node::read_index`] first for a
    /// linearizable read).
    pub fn get(&self, key: &[u8]) -> RaftResult<Option<Vec<u8>>> {
        let db = self.db()?;
        db.get_cf(cf(&db, CF_KV), key).map_err(RaftError::rocks)
    }

    fn db(&self) -> RaftResult<Arc<DB>> {
        self.db.read().unwrap().clone().ok_or(RaftError::Stopped)
    }

    /// A lock's state as applied on this node (expired leases included: expiry is
    /// decided against the clock of whoever asks next).
    pub fn lock(&self, name: &str) -> RaftResult<Option<LockState>> {
        read_lock(&*self.db()?, name)
    }

    /// Scans the applied state.
    pub fn scan(&self, range: &ScanRange<'_>) -> RaftResult<Vec<KeyValue>> {
        let db = self.db()?;
        let iter = db.iterator_cf(cf(&db, CF_KV), range.iterator_mode());
        Ok(collect_range(iter, range)?)
    }

    /// Stops the Raft thread; pending requests fail with `RAFT_STOPPED`. Idempotent.
    pub fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
        if let Some(thread) = self.thread.lock().unwrap().take() {
            let _ = thread.join();
        }
        self.db.write().unwrap().take();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Encodes a message for the wire.
pub fn encode_message(msg: &Message) -> Vec<u8> {
    msg.write_to_bytes().expect("protobuf encodes into a Vec")
}

/// Where this incarnation numbers its reads from: the wall clock in nanoseconds, so that a
/// restarted member's reads do not reuse the contexts of its previous incarnation's reads,
/// which the leader may still hold pending.
fn first_read_number() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

fn fail_input(input: Input, err: RaftError) {
    match input {
        Input::Propose(_, cb) => cb(Err(err)),
        Input::ReadIndex(cb) => cb(Err(err)),
        Input::ConfChange(_, _, cb) => cb(Err(err)),
        Input::Status(cb) => cb(Err(err)),
        _ => {}
    }
}

/// A proposal waiting to be applied, kept encoded so it can be proposed again.
struct Pending {
    data: Vec<u8>,
    waiters: Vec<Waiter<Outcome>>,
}

struct Waiter<T> {
    done: Callback<T>,
    deadline: Instant,
}

struct RaftLoop {
    config: NodeConfig,
    raw: RawNode<RocksStorage>,
    rx: Receiver<Input>,
    transport: Box<dyn Transport>,
    proposals: HashMap<RequestId, Pending>,
    /// The leader the pending proposals and reads were last sent to.
    leader_seen: u64,
    conf_changes: HashMap<RequestId, Waiter<ConfState>>,
    reads_for_index: HashMap<u64, Waiter<u64>>,
    reads_for_apply: Vec<(u64, Waiter<u64>)>,
    /// The next ReadIndex number; see [`RaftLoop::read_ctx`].
    next_read: u64,
    /// The term in which the pending reads were last sent again; see
    /// [`RaftLoop::resend_pending`].
    reads_sent_in_term: u64,
    stopping: bool,
    /// Leadership hand-overs tried since this (removed) leader was removed.
    handover_tries: u32,
}

impl RaftLoop {
    fn new(
        config: NodeConfig,
        raw: RawNode<RocksStorage>,
        rx: Receiver<Input>,
        transport: Box<dyn Transport>,
    ) -> Self {
        Self {
            config,
            raw,
            rx,
            transport,
            proposals: HashMap::new(),
            handover_tries: 0,
            leader_seen: raft::INVALID_ID,
            conf_changes: HashMap::new(),
            reads_for_index: HashMap::new(),
            reads_for_apply: Vec::new(),
            next_read: first_read_number(),
            reads_sent_in_term: 0,
            stopping: false,
        }
    }

    fn run(&mut self) {
        let mut next_tick = Instant::now() + self.config.tick;
        while !self.stopping {
            // Advancing a Ready can make the next one ready at once (a single voter's entries
            // commit as soon as they are persisted): handle it now, not after a tick.
            let wait = if self.raw.has_ready() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            match self.rx.recv_timeout(wait) {
                Ok(input) => self.handle(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Everything already queued joins this Ready: one fsync for all of it.
            for _ in 0..4096 {
                match self.rx.try_recv() {
                    Ok(input) => self.handle(input),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                self.step_down_if_removed();
                self.expire(now);
                next_tick = now + self.config.tick;
            }
            if let Err(err) = self.on_ready() {
                // The disk refused a write or the log is damaged: this member cannot go on
                // safely. Stop, and fail everything waiting.
                self.fail_all(err);
                break;
            }
        }
        self.fail_all(RaftError::Stopped);
        while let Ok(input) = self.rx.try_recv() {
            fail_input(input, RaftError::Stopped);
        }
    }

    fn leader_known(&self) -> bool {
        self.raw.raft.leader_id != raft::INVALID_ID
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.config.request_timeout
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Propose(req, done) => {
                if !self.leader_known() {
                    return done(Err(RaftError::NoLeader));
                }
                let id = req.id;
                let data = encode(&req);
                match self.raw.propose(Vec::new(), data.clone()) {
                    Ok(()) => {
                        let deadline = self.deadline();
                        self.proposals
                            .entry(id)
                            .or_insert_with(|| Pending {
                                data,
                                waiters: Vec::new(),
                            })
                            .waiters
                            .push(Waiter { done, deadline });
                    }
                    Err(e) => done(Err(e.into())),
                }
            }
            Input::Step(msg) => {
                // Errors here are messages raft-rs ignores by design (stale terms, unknown
                // peers after a removal); nothing to report.
                let _ = self.raw.step(*msg);
            }
            Input::ReadIndex(done) => {
                if !self.leader_known() {
                    return done(Err(RaftError::NoLeader));
                }
                let ctx = self.next_read;
                self.next_read = self.next_read.wrapping_add(1);
                self.raw.read_index(self.read_ctx(ctx));
                let deadline = self.deadline();
                self.reads_for_index.insert(ctx, Waiter { done, deadline });
            }
            Input::ConfChange(cc, ctx, done) => {
                if !self.leader_known() {
                    return done(Err(RaftError::NoLeader));
                }
                let id = ctx.id;
                match self.raw.propose_conf_change(encode(&ctx), cc) {
                    Ok(()) => {
                        let deadline = self.deadline();
                        self.conf_changes.insert(id, Waiter { done, deadline });
                    }
                    Err(e) => done(Err(e.into())),
                }
            }
            Input::TransferLeader(to) => self.raw.transfer_leader(to),
            Input::Campaign => {
                let _ = self.raw.campaign();
            }
            Input::Status(done) => done(Ok(self.status())),
            Input::Unreachable(id) => self.raw.report_unreachable(id),
            Input::SnapshotStatus(id, ok) => self.raw.report_snapshot(
                id,
                if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                },
            ),
            Input::Stop => self.stopping = true,
        }
    }

    fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let progress = if raft.state == StateRole::Leader {
            let learners = &raft.prs().conf().learners();
            let mut all: Vec<PeerProgress> = raft
                .prs()
                .iter()
                .map(|(id, pr)| PeerProgress {
                    id: *id,
                    matched: pr.matched,
                    next: pr.next_idx,
                    state: match pr.state {
                        raft::ProgressState::Probe => "probe",
                        raft::ProgressState::Replicate => "replicate",
                        raft::ProgressState::Snapshot => "snapshot",
                    },
                    recent_active: pr.recent_active,
                    learner: learners.contains(id),
                })
                .collect();
            all.sort_by_key(|p| p.id);
            all
        } else {
            Vec::new()
        };
        let cs = store.conf_state();
        NodeStatus {
            id: raft.id,
            role: match raft.state {
                StateRole::Leader => "leader",
                StateRole::Follower => "follower",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre-candidate",
            },
            term: raft.term,
            leader: raft.leader_id,
            commit: raft.raft_log.committed,
            applied: store.applied(),
            first_index: store.truncated_index() + 1,
            last_index: raft.raft_log.last_index(),
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            progress,
            addresses: read_peers(store.db()).unwrap_or_default(),
        }
    }

    fn expire(&mut self, now: Instant) {
        let timeout = |what: &str| {
            RaftError::Timeout(format!("{what} was not applied in time (leader change or no quorum); retrying with the same request id is safe"))
        };
        for pending in self.proposals.values_mut() {
            for w in std::mem::take(&mut pending.waiters) {
                if w.deadline <= now {
                    (w.done)(Err(timeout("proposal")));
                } else {
                    pending.waiters.push(w);
                }
            }
        }
        self.proposals.retain(|_, p| !p.waiters.is_empty());
        let expired: Vec<RequestId> = self
            .conf_changes
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for id in expired {
            let w = self.conf_changes.remove(&id).unwrap();
            (w.done)(Err(timeout("configuration change")));
        }
        let expired: Vec<u64> = self
            .reads_for_index
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for ctx in expired {
            let w = self.reads_for_index.remove(&ctx).unwrap();
            (w.done)(Err(RaftError::Timeout(
                "read index was not confirmed by a quorum in time".into(),
            )));
        }
        for (index, w) in std::mem::take(&mut self.reads_for_apply) {
            if w.deadline <= now {
                (w.done)(Err(RaftError::Timeout(format!(
                    "read index {index} was not applied here in time"
                ))));
            } else {
                self.reads_for_apply.push((index, w));
            }
        }
    }

    fn fail_all(&mut self, err: RaftError) {
        for (_, pending) in self.proposals.drain() {
            for w in pending.waiters {
                (w.done)(Err(err.clone()));
            }
        }
        for (_, w) in self.conf_changes.drain() {
            (w.done)(Err(err.clone()));
        }
        for (_, w) in self.reads_for_index.drain() {
            (w.done)(Err(err.clone()));
        }
        for (_, w) in self.reads_for_apply.drain(..) {
            (w.done)(Err(err.clone()));
        }
    }

    fn on_ready(&mut self) -> RaftResult<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if !rd.messages().is_empty() {
            self.transport.send(rd.take_messages());
        }
        let mut batch = WriteBatch::default();
        let has_snapshot = !rd.snapshot().is_empty();
        let store = self.raw.mut_store();
        if has_snapshot {
            store.install_snapshot(&mut batch, rd.snapshot())?;
        }
        store.append(&mut batch, rd.entries())?;
        if let Some(hs) = rd.hs() {
            store.set_hard_state(&mut batch, hs)?;
        }
        if !batch.is_empty() {
            store.write(batch, rd.must_sync() || has_snapshot)?;
        }
        if !rd.persisted_messages().is_empty() {
            self.transport.send(rd.take_persisted_messages());
        }
        for rs in rd.take_read_states() {
            let Some(ctx) = self.own_read(&rs.request_ctx) else {
                continue;
            };
            if let Some(w) = self.reads_for_index.remove(&ctx) {
                self.reads_for_apply.push((rs.index, w));
            }
        }
        self.apply(rd.take_committed_entries(), None)?;
        let mut light = self.raw.advance(rd);
        let commit = light.commit_index();
        if !light.messages().is_empty() {
            self.transport.send(light.take_messages());
        }
        self.apply(light.take_committed_entries(), commit)?;
        self.raw.advance_apply();
        self.answer_reads();
        self.resend_pending();
        self.maybe_compact()
    }

    fn apply(&mut self, entries: Vec<Entry>, commit: Option<u64>) -> RaftResult<()> {
        let db = self.raw.store().db().clone();
        let mut batch = WriteBatch::default();
        if let Some(commit) = commit {
            self.raw.mut_store().set_commit(&mut batch, commit)?;
        }
        let Some(last) = entries.last().map(|e| e.index) else {
            if !batch.is_empty() {
                self.raw.store().write(batch, false)?;
            }
            return Ok(());
        };
        let mut outcomes = Vec::new();
        let mut confs = Vec::new();
        let mut conf_state = None;
        {
            let mut applier = Applier::new(&db, &mut batch);
            for entry in &entries {
                match entry.get_entry_type() {
                    EntryType::EntryNormal if entry.data.is_empty() => {} // a new leader's no-op
                    EntryType::EntryNormal => {
                        let req: Request = decode(&entry.data, "log request")?;
                        let outcome = applier.apply(entry.index, &req)?;
                        outcomes.push((req.id, outcome));
                    }
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                        let cc = if entry.get_entry_type() == EntryType::EntryConfChange {
                            ConfChange::parse_from_bytes(&entry.data).map(|c| c.into_v2())
                        } else {
                            ConfChangeV2::parse_from_bytes(&entry.data)
                        }
                        .map_err(|e| {
                            RaftError::Corruption(format!(
                                "undecodable configuration change at {}: {e}",
                                entry.index
                            ))
                        })?;
                        let cs = self.raw.apply_conf_change(&cc)?;
                        let ctx: ConfContext = if entry.context.is_empty() {
                            ConfContext::default()
                        } else {
                            decode(&entry.context, "configuration context")?
                        };
                        let removed: Vec<u64> = cc
                            .changes
                            .iter()
                            .filter(|c| {
                                c.get_change_type() == raft::eraftpb::ConfChangeType::RemoveNode
                            })
                            .map(|c| c.node_id)
                            .collect();
                        applier.set_peers(&ctx.addresses, &removed);
                        confs.push((ctx.id, cs.clone()));
                        conf_state = Some(cs);
                    }
                }
            }
        }
        let store = self.raw.mut_store();
        if store.commit() < last {
            store.set_commit(&mut batch, last)?;
        }
        store.set_applied(&mut batch, last, conf_state.as_ref())?;
        // Not synced: the entries are durable in the log, and a crash before this batch
        // reaches disk replays them (applied and commit move together, so applied ≤ commit).
        store.write(batch, false)?;
        for (id, outcome) in outcomes {
            if let Some(pending) = self.proposals.remove(&id) {
                for w in pending.waiters {
                    (w.done)(Ok(outcome.clone()));
                }
            }
        }
        for (id, cs) in confs {
            if let Some(w) = self.conf_changes.remove(&id) {
                (w.done)(Ok(cs));
            }
        }
        Ok(())
    }

    /// raft-rs keeps a leader that a configuration change removed in charge (it goes on
    /// heartbeating, so the remaining voters never elect anyone): hand leadership to the
    /// most caught-up remaining voter, then step down. Checked on every tick: a transferee
    /// that has not applied the change yet ignores the hand-over and raft-rs drops it
    /// after an election timeout, so the first try is retried once before giving up
    /// the lead anyway (the voters then elect someone after their own timeout).
    fn step_down_if_removed(&mut self) {
        let raft = &self.raw.raft;
        let id = raft.id;
        if raft.state != StateRole::Leader {
            self.handover_tries = 0;
            return;
        }
        if raft.lead_transferee.is_some() {
            return;
        }
        let cs = self.raw.store().conf_state();
        if cs.voters.contains(&id) || cs.voters_outgoing.contains(&id) {
            return;
        }
        let best = cs
            .voters
            .iter()
            .copied()
            .max_by_key(|v| raft.prs().get(*v).map_or(0, |p| p.matched));
        match best {
            Some(to) if self.handover_tries < 2 => {
                self.handover_tries += 1;
                self.raw.transfer_leader(to);
            }
            _ => {
                let term = self.raw.raft.term;
                self.raw.raft.become_follower(term, raft::INVALID_ID);
            }
        }
    }

    /// A follower forwards proposals and reads to its leader; if that leader dies they are
    /// lost and would wait out their deadline. When a new leader appears, send the
    /// proposals again (request ids make a proposal that did get through apply once); send
    /// the reads again once this member sees an entry of the new term committed, because a
    /// leader drops ReadIndex requests until it has committed an entry of its term (a read
    /// answered twice is answered once).
    fn resend_pending(&mut self) {
        let leader = self.raw.raft.leader_id;
        if leader != self.leader_seen {
            self.leader_seen = leader;
            if leader != raft::INVALID_ID {
                let data: Vec<Vec<u8>> = self.proposals.values().map(|p| p.data.clone()).collect();
                for d in data {
                    let _ = self.raw.propose(Vec::new(), d);
                }
            }
        }
        let term = self.raw.raft.term;
        if self.reads_sent_in_term == term
            || !self.leader_known()
            || !self.raw.raft.commit_to_current_term()
        {
            return;
        }
        self.reads_sent_in_term = term;
        let reads: Vec<Vec<u8>> = self
            .reads_for_index
            .keys()
            .map(|&n| self.read_ctx(n))
            .collect();
        for ctx in reads {
            self.raw.read_index(ctx);
        }
    }

    /// A ReadIndex request's context: this member's id and the read's number. raft-rs's
    /// read-only queue keys pending requests by context and drops a request whose context
    /// is already pending, so contexts must be unique across the cluster, not per member —
    /// two members' reads numbered alike once collided at the leader and one of them waited
    /// out its deadline.
    fn read_ctx(&self, number: u64) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(16);
        ctx.extend_from_slice(&self.raw.raft.id.to_be_bytes());
        ctx.extend_from_slice(&number.to_be_bytes());
        ctx
    }

    /// The number of a read this member asked for, if `ctx` is one of this member's.
    fn own_read(&self, ctx: &[u8]) -> Option<u64> {
        let (id, number) = ctx.split_at_checked(8)?;
        let id = u64::from_be_bytes(id.try_into().ok()?);
        let number = u64::from_be_bytes(number.try_into().ok()?);
        (id == self.raw.raft.id).then_some(number)
    }

    fn answer_reads(&mut self) {
        let applied = self.raw.store().applied();
        for (index, w) in std::mem::take(&mut self.reads_for_apply) {
            if index <= applied {
                (w.done)(Ok(index));
            } else {
                self.reads_for_apply.push((index, w));
            }
        }
    }

    fn maybe_compact(&mut self) -> RaftResult<()> {
        let store = self.raw.mut_store();
        let (applied, truncated) = (store.applied(), store.truncated_index());
        if applied.saturating_sub(truncated) <= self.config.compact_threshold {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        store.compact(&mut batch, applied - self.config.keep_entries.min(applied))?;
        store.write(batch, false)
    }
}
