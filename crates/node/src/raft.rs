//! Binding for `novacron-raftstore`. The Raft loop runs on its own Rust thread; JS sends
//! it requests tagged with a number; answers queue up and one threadsafe call (`onDone`)
//! wakes JS to take them all (`takeCompletions`). Messages for peers come through
//! another threadsafe function (`onMessages`), a Ready's worth at a time.
//! Nothing here blocks the event loop: fsync happens on the Raft thread.
//!
//! Member ids, indexes and fencing tokens are JS numbers (ids are chosen below 2^53).

use crate::store::{
    into_pairs, store_options, to_ops, BindingKeyValue, BindingScanRange, BindingStoreOptions,
    BindingWriteOp,
};
use crate::{js_error, BindingError, Result};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use novacron_raftstore::eraftpb::{ConfState, Message, MessageType};
use novacron_raftstore::{
    bootstrap, encode_message, Callback, Command, Fence, MemberChange, Node, NodeConfig,
    NodeStatus, Outcome, RaftError, Request, RequestId, Transport,
};
use novacron_store::ScanRange;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn to_js(err: RaftError) -> Error<crate::Code> {
    js_error(err.code(), err)
}

fn member_id(id: i64) -> Result<u64> {
    if id <= 0 || id > (1i64 << 53) {
        return Err(to_js(RaftError::Invalid(format!(
            "member id {id} must be in 1..=2^53"
        ))));
    }
    Ok(id as u64)
}

fn request_id(bytes: &[u8]) -> Result<RequestId> {
    let id: [u8; 16] = bytes
        .try_into()
        .map_err(|_| to_js(RaftError::Invalid("request id must be 16 bytes".into())))?;
    Ok(RequestId(id))
}

/// Tunables of a Raft member (defaults in `NodeConfig`).
#[napi(object)]
pub struct BindingRaftNodeOptions {
    /// This member's id.
    pub id: i64,
    /// Tick length in ms. @default 50
    pub tick_ms: Option<u32>,
    /// Election timeout in ticks. @default 10
    pub election_ticks: Option<u32>,
    /// Heartbeat interval in ticks. @default 2
    pub heartbeat_ticks: Option<u32>,
    /// Deadline for proposals, reads and membership changes, ms. @default 5000
    pub request_timeout_ms: Option<u32>,
    /// Largest write accepted, bytes. @default 1048576
    pub max_request_bytes: Option<u32>,
    /// Compact the log once this many applied entries are kept. @default 10000
    pub compact_threshold: Option<u32>,
    /// Applied entries kept after a compaction. @default 1000
    pub keep_entries: Option<u32>,
}

impl BindingRaftNodeOptions {
    fn to_config(&self) -> Result<NodeConfig> {
        let mut c = NodeConfig::new(member_id(self.id)?);
        if let Some(v) = self.tick_ms {
            c.tick = Duration::from_millis(v.max(1) as u64);
        }
        if let Some(v) = self.election_ticks {
            c.election_ticks = v as usize;
        }
        if let Some(v) = self.heartbeat_ticks {
            c.heartbeat_ticks = v as usize;
        }
        if let Some(v) = self.request_timeout_ms {
            c.request_timeout = Duration::from_millis(v as u64);
        }
        if let Some(v) = self.max_request_bytes {
            c.max_request_bytes = v as usize;
        }
        if let Some(v) = self.compact_threshold {
            c.compact_threshold = v as u64;
        }
        if let Some(v) = self.keep_entries {
            c.keep_entries = v as u64;
        }
        Ok(c)
    }
}

/// A message for another member.
#[napi(object)]
pub struct BindingRaftOutbound {
    /// Recipient member id.
    pub to: i64,
    /// A snapshot: report its delivery with `reportSnapshot`.
    pub snapshot: bool,
    /// Encoded message, for the recipient's `step`.
    pub bytes: Buffer,
}

/// A write's fence: refuse unless `token` is still `lock`'s current token.
#[napi(object)]
pub struct BindingRaftFence {
    /// Lock name.
    pub lock: String,
    /// Fencing token from the grant.
    pub token: i64,
}

/// Which outcome a request had (see [`BindingRaftOutcome`] for the fields each sets).
#[napi(string_enum)]
pub enum BindingOutcomeKind {
    /// A write was applied at `index`.
    #[napi(value = "written")]
    Written,
    /// A write's fence was stale; `token` is the lock's current token, if held.
    #[napi(value = "fenced")]
    Fenced,
    /// A lock was granted: `token`, `expiresMs`.
    #[napi(value = "granted")]
    Granted,
    /// A lock is held by `holder` (`token`, `expiresMs`).
    #[napi(value = "held")]
    Held,
    /// A lock was released.
    #[napi(value = "released")]
    Released,
    /// The token did not hold the lock.
    #[napi(value = "notHeld")]
    NotHeld,
}

/// What applying a request produced.
#[napi(object)]
pub struct BindingRaftOutcome {
    /// Which outcome.
    pub kind: BindingOutcomeKind,
    /// Log index of a write.
    pub index: Option<i64>,
    /// Fencing token of a grant (or of the current holder for `held` and `fenced`).
    pub token: Option<i64>,
    /// Lease end of a grant or of the current holder, ms since the epoch.
    pub expires_ms: Option<i64>,
    /// Current holder (`held`).
    pub holder: Option<String>,
}

impl From<Outcome> for BindingRaftOutcome {
    fn from(o: Outcome) -> Self {
        let base = |kind: BindingOutcomeKind| BindingRaftOutcome {
            kind,
            index: None,
            token: None,
            expires_ms: None,
            holder: None,
        };
        match o {
            Outcome::Written { index } => BindingRaftOutcome {
                index: Some(index as i64),
                ..base(BindingOutcomeKind::Written)
            },
            Outcome::Fenced { current } => BindingRaftOutcome {
                token: current.map(|t| t as i64),
                ..base(BindingOutcomeKind::Fenced)
            },
            Outcome::Granted { token, expires_ms } => BindingRaftOutcome {
                token: Some(token as i64),
                expires_ms: Some(expires_ms as i64),
                ..base(BindingOutcomeKind::Granted)
            },
            Outcome::Held {
                holder,
                token,
                expires_ms,
            } => BindingRaftOutcome {
                token: Some(token as i64),
                expires_ms: Some(expires_ms as i64),
                holder: Some(holder),
                ..base(BindingOutcomeKind::Held)
            },
            Outcome::Released => base(BindingOutcomeKind::Released),
            Outcome::NotHeld => base(BindingOutcomeKind::NotHeld),
        }
    }
}

/// What one step of a membership change does.
#[napi(string_enum)]
pub enum BindingMemberChangeKind {
    /// Adds a voting member (or promotes a learner).
    #[napi(value = "addVoter")]
    AddVoter,
    /// Adds a non-voting member that catches up first.
    #[napi(value = "addLearner")]
    AddLearner,
    /// Removes a member.
    #[napi(value = "remove")]
    Remove,
}

/// One step of a membership change.
#[napi(object)]
pub struct BindingRaftMemberChange {
    /// What it does.
    pub kind: BindingMemberChangeKind,
    /// Member id.
    pub id: i64,
}

/// A member's peer address.
#[napi(object)]
pub struct BindingRaftPeerAddress {
    /// Member id.
    pub id: i64,
    /// Where its peer endpoint listens.
    pub address: String,
}

/// Voters and learners.
#[napi(object)]
pub struct BindingRaftMembers {
    /// Voting members.
    pub voters: Vec<i64>,
    /// Learners.
    pub learners: Vec<i64>,
}

impl From<ConfState> for BindingRaftMembers {
    fn from(cs: ConfState) -> Self {
        Self {
            voters: ids(&cs.voters),
            learners: ids(&cs.learners),
        }
    }
}

fn ids(v: &[u64]) -> Vec<i64> {
    v.iter().map(|&i| i as i64).collect()
}

/// A member's replication progress as the leader sees it.
#[napi(object)]
pub struct BindingRaftPeerProgress {
    /// Member id.
    pub id: i64,
    /// Highest index known replicated on it.
    pub matched: i64,
    /// Next index to send.
    pub next: i64,
    /// `probe`, `replicate` or `snapshot`.
    pub state: String,
    /// Heard from within the last election timeout.
    pub recent_active: bool,
    /// Non-voting member.
    pub learner: bool,
}

/// A node's state.
#[napi(object)]
pub struct BindingRaftStatus {
    /// This member.
    pub id: i64,
    /// `leader`, `follower`, `candidate` or `pre-candidate`.
    pub role: String,
    /// Current term.
    pub term: i64,
    /// Known leader, 0 when none.
    pub leader: i64,
    /// Commit index.
    pub commit: i64,
    /// Applied index.
    pub applied: i64,
    /// First index still in the log.
    pub first_index: i64,
    /// Last index in the log.
    pub last_index: i64,
    /// Voting members.
    pub voters: Vec<i64>,
    /// Learners.
    pub learners: Vec<i64>,
    /// The previous voters while in a joint configuration, else empty.
    pub voters_outgoing: Vec<i64>,
    /// Per-member progress (leader only).
    pub progress: Vec<BindingRaftPeerProgress>,
    /// Members' peer addresses.
    pub addresses: Vec<BindingRaftPeerAddress>,
}

impl From<NodeStatus> for BindingRaftStatus {
    fn from(s: NodeStatus) -> Self {
        Self {
            id: s.id as i64,
            role: s.role.into(),
            term: s.term as i64,
            leader: s.leader as i64,
            commit: s.commit as i64,
            applied: s.applied as i64,
            first_index: s.first_index as i64,
            last_index: s.last_index as i64,
            voters: ids(&s.voters),
            learners: ids(&s.learners),
            voters_outgoing: ids(&s.voters_outgoing),
            progress: s
                .progress
                .into_iter()
                .map(|p| BindingRaftPeerProgress {
                    id: p.id as i64,
                    matched: p.matched as i64,
                    next: p.next as i64,
                    state: p.state.into(),
                    recent_active: p.recent_active,
                    learner: p.learner,
                })
                .collect(),
            addresses: s
                .addresses
                .into_iter()
                .map(|(id, address)| BindingRaftPeerAddress {
                    id: id as i64,
                    address,
                })
                .collect(),
        }
    }
}

/// The answer to one tagged request: one variant per kind of result (a tagged union in
/// TypeScript, discriminated by `kind`).
#[napi(discriminant = "kind", discriminant_case = "camelCase")]
pub enum BindingRaftCompletion {
    /// The request failed.
    Failed {
        /// The tag the request was made with.
        tag: u32,
        /// Why.
        error: BindingError,
    },
    /// `write`, `acquire`, `release` or `setAddress` was applied.
    Outcome {
        /// The tag the request was made with.
        tag: u32,
        /// What applying it produced.
        outcome: BindingRaftOutcome,
    },
    /// `readIndex`: the index now applied locally.
    ReadIndex {
        /// The tag the request was made with.
        tag: u32,
        /// The applied index.
        index: i64,
    },
    /// `changeMembership`: the configuration it led to.
    Members {
        /// The tag the request was made with.
        tag: u32,
        /// Voters and learners.
        members: BindingRaftMembers,
    },
    /// `status`.
    Status {
        /// The tag the request was made with.
        tag: u32,
        /// The node's status.
        status: BindingRaftStatus,
    },
}

/// A lock's replicated state.
#[napi(object)]
pub struct BindingRaftLock {
    /// Holder.
    pub holder: String,
    /// Fencing token.
    pub token: i64,
    /// Lease end, ms since the epoch.
    pub expires_ms: i64,
}

type WakeFn = ThreadsafeFunction<u32, (), u32, Status, false, true>;
type MessagesFn =
    ThreadsafeFunction<Vec<BindingRaftOutbound>, (), Vec<BindingRaftOutbound>, Status, false, true>;

struct JsTransport {
    on_messages: Arc<MessagesFn>,
}

impl Transport for JsTransport {
    fn send(&mut self, messages: Vec<Message>) {
        let out = messages
            .iter()
            .map(|m| BindingRaftOutbound {
                to: m.to as i64,
                snapshot: m.get_msg_type() == MessageType::MsgSnapshot,
                bytes: encode_message(m).into(),
            })
            .collect();
        self.on_messages
            .call(out, ThreadsafeFunctionCallMode::NonBlocking);
    }
}

/// Answers waiting to be taken by JavaScript. The Raft thread answers a whole Ready's
/// requests at once; JavaScript is woken once per batch (when the queue turns
/// non-empty) and takes them all in one call, instead of one threadsafe call each.
struct Completions {
    queue: Mutex<Vec<BindingRaftCompletion>>,
    wake: WakeFn,
}

impl Completions {
    fn push(&self, c: BindingRaftCompletion) {
        let mut queue = self.queue.lock().unwrap();
        queue.push(c);
        if queue.len() == 1 {
            self.wake.call(1, ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

/// A Raft member with its log and state in RocksDB (see the `novacron-raftstore` crate).
#[napi]
pub struct NativeRaftNode {
    node: Arc<Node>,
    completions: Arc<Completions>,
}

impl NativeRaftNode {
    /// A callback that answers request `tag` with `fill(result)`.
    fn reply<T: 'static>(
        &self,
        tag: u32,
        answer: fn(u32, T) -> BindingRaftCompletion,
    ) -> Callback<T> {
        let completions = self.completions.clone();
        Box::new(move |result| {
            completions.push(match result {
                Ok(v) => answer(tag, v),
                Err(e) => BindingRaftCompletion::Failed {
                    tag,
                    error: BindingError::new(e.code(), &e),
                },
            });
        })
    }

    fn propose(&self, tag: u32, id: &[u8], command: Command) -> Result<()> {
        let req = Request {
            id: request_id(id)?,
            command,
        };
        self.node.propose(
            req,
            self.reply(tag, |tag, o: Outcome| BindingRaftCompletion::Outcome {
                tag,
                outcome: o.into(),
            }),
        );
        Ok(())
    }
}

#[napi]
impl NativeRaftNode {
    /// Makes the node in `path` the only member of a new cluster. Throws `RAFT_INVALID`
    /// if it already belongs to one.
    #[napi]
    pub fn bootstrap(
        path: String,
        id: i64,
        address: String,
        options: Option<BindingStoreOptions>,
    ) -> Result<()> {
        bootstrap(
            path.as_ref(),
            member_id(id)?,
            &address,
            &store_options(options),
        )
        .map_err(to_js)
    }

    /// Opens the node's database (checking it; `RAFT_CORRUPTION` or `STORE_CORRUPTION`
    /// when damaged) and starts its Raft thread.
    #[napi(factory)]
    pub fn start(
        path: String,
        options: BindingRaftNodeOptions,
        store: Option<BindingStoreOptions>,
        #[napi(ts_arg_type = "(messages: BindingRaftOutbound[]) => void")] on_messages: MessagesFn,
        #[napi(ts_arg_type = "(pending: number) => void")] on_done: WakeFn,
    ) -> Result<Self> {
        let transport = JsTransport {
            on_messages: Arc::new(on_messages),
        };
        let node = Node::start(
            path.as_ref(),
            options.to_config()?,
            &store_options(store),
            Box::new(transport),
        )
        .map_err(to_js)?;
        let completions = Arc::new(Completions {
            queue: Mutex::new(Vec::new()),
            wake: on_done,
        });
        Ok(Self {
            node: Arc::new(node),
            completions,
        })
    }

    /// Takes every answer queued since the last call (`onDone` says when there are some).
    #[napi]
    pub fn take_completions(&self) -> Vec<BindingRaftCompletion> {
        std::mem::take(&mut *self.completions.queue.lock().unwrap())
    }

    /// Proposes an atomic write (`value` absent = delete), fenced by a lock token when
    /// `fence` is given. `requestId` (16 bytes) makes a retry apply once.
    #[napi]
    pub fn write(
        &self,
        tag: u32,
        request_id: Buffer,
        ops: Vec<BindingWriteOp>,
        fence: Option<BindingRaftFence>,
    ) -> Result<()> {
        let ops = to_ops(ops);
        let fence = fence.map(|f| Fence {
            lock: f.lock,
            token: f.token.max(0) as u64,
        });
        self.propose(tag, &request_id, Command::Write { ops, fence })
    }

    /// Takes (or renews) `lock` for `holder` for `ttlMs` from `nowMs`.
    #[napi]
    pub fn acquire(
        &self,
        tag: u32,
        request_id: Buffer,
        lock: String,
        holder: String,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        let command = Command::Acquire {
            lock,
            holder,
            ttl_ms: ttl_ms.max(0) as u64,
            now_ms: now_ms.max(0) as u64,
        };
        self.propose(tag, &request_id, command)
    }

    /// Releases `lock` if `token` is current.
    #[napi]
    pub fn release(&self, tag: u32, request_id: Buffer, lock: String, token: i64) -> Result<()> {
        self.propose(
            tag,
            &request_id,
            Command::Release {
                lock,
                token: token.max(0) as u64,
            },
        )
    }

    /// Records a member's new peer address in the replicated state.
    #[napi]
    pub fn set_address(
        &self,
        tag: u32,
        request_id: Buffer,
        member: i64,
        address: String,
    ) -> Result<()> {
        self.propose(
            tag,
            &request_id,
            Command::SetAddress {
                member: member_id(member)?,
                address,
            },
        )
    }

    /// Confirms leadership with a quorum; answers once that index is applied here.
    #[napi]
    pub fn read_index(&self, tag: u32) {
        self.node.read_index(
            self.reply(tag, |tag, i: u64| BindingRaftCompletion::ReadIndex {
                tag,
                index: i as i64,
            }),
        );
    }

    /// Proposes a membership change (ConfChangeV2).
    #[napi]
    pub fn change_membership(
        &self,
        tag: u32,
        changes: Vec<BindingRaftMemberChange>,
        addresses: Vec<BindingRaftPeerAddress>,
    ) -> Result<()> {
        let changes = changes
            .iter()
            .map(|c| {
                let id = member_id(c.id)?;
                Ok(match c.kind {
                    BindingMemberChangeKind::AddVoter => MemberChange::AddVoter(id),
                    BindingMemberChangeKind::AddLearner => MemberChange::AddLearner(id),
                    BindingMemberChangeKind::Remove => MemberChange::Remove(id),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let addresses = addresses
            .into_iter()
            .map(|a| Ok((member_id(a.id)?, a.address)))
            .collect::<Result<Vec<_>>>()?;
        self.node.change_membership(
            &changes,
            addresses,
            self.reply(tag, |tag, cs: ConfState| BindingRaftCompletion::Members {
                tag,
                members: cs.into(),
            }),
        );
        Ok(())
    }

    /// The node's status.
    #[napi]
    pub fn status(&self, tag: u32) {
        self.node.status(
            self.reply(tag, |tag, s: NodeStatus| BindingRaftCompletion::Status {
                tag,
                status: s.into(),
            }),
        );
    }

    /// Delivers a message from member `from` (who the peer connection authenticated).
    /// Throws `RAFT_BAD_MESSAGE` for anything malformed, not addressed to this member, or
    /// whose sender is not `from`.
    #[napi]
    pub fn step(&self, bytes: Buffer, from: i64) -> Result<()> {
        self.node.step(&bytes, member_id(from)?).map_err(to_js)
    }

    /// Delivers several messages from member `from`, packed as `[u32 big-endian
    /// length][message]…` (one peer frame carries a Ready's worth of messages). Stops at
    /// the first bad one with `RAFT_BAD_MESSAGE`; returns how many were stepped.
    #[napi]
    pub fn step_batch(&self, bytes: Buffer, from: i64) -> Result<u32> {
        let from = member_id(from)?;
        let mut rest: &[u8] = &bytes;
        let mut n = 0;
        while !rest.is_empty() {
            let bad = |what: &str| {
                to_js(RaftError::BadMessage(format!(
                    "batch frame: {what} after {n} messages"
                )))
            };
            let len = rest.get(..4).ok_or_else(|| bad("truncated length"))?;
            let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
            let msg = rest
                .get(4..4 + len)
                .ok_or_else(|| bad("truncated message"))?;
            self.node.step(msg, from).map_err(to_js)?;
            rest = &rest[4 + len..];
            n += 1;
        }
        Ok(n)
    }

    /// The last message to `id` could not be delivered.
    #[napi]
    pub fn report_unreachable(&self, id: i64) -> Result<()> {
        self.node.report_unreachable(member_id(id)?);
        Ok(())
    }

    /// Whether a snapshot sent to `id` arrived.
    #[napi]
    pub fn report_snapshot(&self, id: i64, delivered: bool) -> Result<()> {
        self.node.report_snapshot(member_id(id)?, delivered);
        Ok(())
    }

    /// Asks the leader to hand leadership to `id`.
    #[napi]
    pub fn transfer_leader(&self, id: i64) -> Result<()> {
        self.node.transfer_leader(member_id(id)?);
        Ok(())
    }

    /// Starts an election now.
    #[napi]
    pub fn campaign(&self) {
        self.node.campaign();
    }

    /// Reads a key of the locally applied state.
    #[napi]
    pub fn get_sync(&self, key: Buffer) -> Result<Option<Buffer>> {
        Ok(self.node.get(&key).map_err(to_js)?.map(Buffer::from))
    }

    /// Scans the locally applied state.
    #[napi]
    pub fn scan_sync(&self, range: BindingScanRange) -> Result<Vec<BindingKeyValue>> {
        let r = ScanRange {
            start: &range.start,
            end: &range.end,
            limit: range.limit.unwrap_or(0) as usize,
            reverse: range.reverse.unwrap_or(false),
        };
        Ok(into_pairs(self.node.scan(&r).map_err(to_js)?))
    }

    /// A lock's applied state.
    #[napi]
    pub fn lock(&self, name: String) -> Result<Option<BindingRaftLock>> {
        Ok(self
            .node
            .lock(&name)
            .map_err(to_js)?
            .map(|l| BindingRaftLock {
                holder: l.holder,
                token: l.token as i64,
                expires_ms: l.expires_ms as i64,
            }))
    }

    /// Stops the Raft thread and closes the database; pending requests fail with
    /// `RAFT_STOPPED`.
    #[napi]
    pub fn stop(&self) {
        self.node.stop();
    }
}
