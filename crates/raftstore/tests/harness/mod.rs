//! An in-process cluster: real nodes on real RocksDB directories, connected by a
//! network whose links the test can cut (both directions or one).

#![allow(dead_code)]

use novacron_raftstore::eraftpb::{ConfState, Message, MessageType};
use novacron_raftstore::{
    bootstrap, encode_message, Command, MemberChange, Node, NodeConfig, NodeStatus, Op, Outcome,
    RaftError, RaftResult, Request, RequestId, Transport,
};
use novacron_store::StoreOptions;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Net {
    nodes: Mutex<HashMap<u64, Arc<Node>>>,
    cut: Mutex<HashSet<(u64, u64)>>,
    /// Drops the messages it matches (lost on the wire), besides cut links.
    filter: Mutex<Option<MessageFilter>>,
    pub snapshots_delivered: AtomicU64,
}

pub type MessageFilter = Box<dyn Fn(&Message) -> bool + Send>;

impl Net {
    fn get(&self, id: u64) -> Option<Arc<Node>> {
        self.nodes.lock().unwrap().get(&id).cloned()
    }

    fn is_cut(&self, msg: &Message) -> bool {
        self.cut.lock().unwrap().contains(&(msg.from, msg.to))
            || self.filter.lock().unwrap().as_ref().is_some_and(|f| f(msg))
    }
}

struct NetTransport {
    net: Arc<Net>,
}

impl Transport for NetTransport {
    fn send(&mut self, messages: Vec<Message>) {
        for msg in messages {
            let (from, to) = (msg.from, msg.to);
            let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let target = if self.net.is_cut(&msg) {
                None
            } else {
                self.net.get(to)
            };
            let Some(target) = target else {
                if let Some(src) = self.net.get(from) {
                    src.report_unreachable(to);
                    if is_snapshot {
                        src.report_snapshot(to, false);
                    }
                }
                continue;
            };
            target
                .step(&encode_message(&msg), from)
                .expect("peer messages are well formed");
            if is_snapshot {
                self.net.snapshots_delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(src) = self.net.get(from) {
                    src.report_snapshot(to, true);
                }
            }
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub net: Arc<Net>,
    pub config: NodeConfig,
    pub options: StoreOptions,
}

/// Fast ticks so elections take a fraction of a second.
pub fn test_config(id: u64) -> NodeConfig {
    let mut c = NodeConfig::new(id);
    c.tick = Duration::from_millis(20);
    c.request_timeout = Duration::from_secs(3);
    c
}

impl Cluster {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            net: Arc::default(),
            config: test_config(0),
            options: StoreOptions::default(),
        }
    }

    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    pub fn address(id: u64) -> String {
        format!("127.0.0.1:{}", 7000 + id)
    }

    pub fn bootstrap(&self, id: u64) {
        bootstrap(&self.path(id), id, &Self::address(id), &self.options).unwrap();
    }

    pub fn try_start(&self, id: u64) -> RaftResult<Arc<Node>> {
        let config = NodeConfig {
            id,
            ..self.config.clone()
        };
        let node = Arc::new(Node::start(
            &self.path(id),
            config,
            &self.options,
            Box::new(NetTransport {
                net: self.net.clone(),
            }),
        )?);
        self.net.nodes.lock().unwrap().insert(id, node.clone());
        Ok(node)
    }

    pub fn start(&self, id: u64) -> Arc<Node> {
        self.try_start(id).unwrap()
    }

    /// Stops a node (its thread ends; its directory stays for a restart).
    pub fn stop(&self, id: u64) {
        let node = self.net.nodes.lock().unwrap().remove(&id);
        if let Some(node) = node {
            node.stop();
        }
    }

    pub fn node(&self, id: u64) -> Arc<Node> {
        self.net
            .get(id)
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    pub fn running(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.net.nodes.lock().unwrap().keys().copied().collect();
        ids.sort();
        ids
    }

    /// Cuts every link between `id` and the other nodes, both ways.
    pub fn isolate(&self, id: u64, others: &[u64]) {
        let mut cut = self.net.cut.lock().unwrap();
        for &o in others {
            cut.insert((id, o));
            cut.insert((o, id));
        }
    }

    /// Starts `id`, adds it as a learner through the leader of the formed cluster and
    /// waits until it has applied everything; returns that leader.
    pub fn add_caught_up_learner(&self, id: u64) -> u64 {
        let voters = self.running();
        self.start(id);
        let leader = self.leader_among(&voters);
        self.change_membership(
            leader,
            &[MemberChange::AddLearner(id)],
            vec![(id, Cluster::address(id))],
        );
        self.wait_applied(id, self.status(leader).commit);
        leader
    }

    /// Proposes a membership change through `via` and waits until it is applied there.
    pub fn change_membership(
        &self,
        via: u64,
        changes: &[MemberChange],
        addresses: Vec<(u64, String)>,
    ) -> ConfState {
        call(|done| self.node(via).change_membership(changes, addresses, done)).unwrap()
    }

    /// Drops every message `filter` matches until `heal`.
    pub fn drop_messages(&self, filter: impl Fn(&Message) -> bool + Send + 'static) {
        *self.net.filter.lock().unwrap() = Some(Box::new(filter));
    }

    pub fn heal(&self) {
        self.net.cut.lock().unwrap().clear();
        *self.net.filter.lock().unwrap() = None;
    }

    pub fn status(&self, id: u64) -> NodeStatus {
        call(|done| self.node(id).status(done)).unwrap()
    }

    /// Waits for a leader that every listed node agrees on.
    pub fn leader_among(&self, ids: &[u64]) -> u64 {
        let mut last = Vec::new();
        let found = wait_for(Duration::from_secs(10), || {
            last = ids.iter().map(|&id| self.status(id)).collect::<Vec<_>>();
            let leader = last[0].leader;
            leader != 0
                && last.iter().all(|s| s.leader == leader)
                && ids.contains(&leader)
                && self.status(leader).role == "leader"
        });
        assert!(found, "no agreed leader among {ids:?}: {last:?}");
        last[0].leader
    }

    pub fn leader(&self) -> u64 {
        self.leader_among(&self.running())
    }

    /// Forms a cluster of `ids` (the first bootstraps; the rest join as learners and are
    /// promoted), as an operator would.
    pub fn form(&self, ids: &[u64]) {
        self.bootstrap(ids[0]);
        self.start(ids[0]);
        self.node(ids[0]).campaign();
        self.leader_among(&ids[..1]);
        for &id in &ids[1..] {
            let leader = self.add_caught_up_learner(id);
            self.change_membership(leader, &[MemberChange::AddVoter(id)], vec![]);
        }
        let leader = self.leader();
        let commit = self.status(leader).commit;
        for &id in ids {
            self.wait_applied(id, commit);
        }
    }

    pub fn wait_applied(&self, id: u64, index: u64) {
        let ok = wait_for(Duration::from_secs(10), || self.status(id).applied >= index);
        assert!(ok, "node {id} did not apply {index}: {:?}", self.status(id));
    }
}

/// Calls a callback-style node method and waits for its answer.
pub fn call<T: Send + 'static>(
    f: impl FnOnce(Box<dyn FnOnce(RaftResult<T>) + Send>),
) -> RaftResult<T> {
    let (tx, rx) = mpsc::channel();
    f(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(Duration::from_secs(30))
        .expect("node answered")
}

pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

pub fn put_request(key: &str, value: &str) -> Request {
    Request {
        id: RequestId::random(),
        command: Command::Write {
            ops: vec![Op::Put {
                key: key.into(),
                value: value.into(),
            }],
            fence: None,
        },
    }
}

pub fn propose(node: &Node, req: Request) -> RaftResult<Outcome> {
    call(|done| node.propose(req, done))
}

/// Writes through `node`, retrying (same request id) while the cluster elects a leader.
pub fn put(node: &Node, key: &str, value: &str) -> Outcome {
    let req = put_request(key, value);
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        match propose(node, req.clone()) {
            Ok(outcome) => return outcome,
            Err(e @ (RaftError::NoLeader | RaftError::Timeout(_))) if Instant::now() < end => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("write of {key} failed: {e}"),
        }
    }
}

pub fn get(node: &Node, key: &str) -> Option<String> {
    node.get(key.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

/// A linearizable read: ReadIndex, then the local state.
pub fn read(node: &Node, key: &str) -> RaftResult<Option<String>> {
    call(|done| node.read_index(done))?;
    Ok(get(node, key))
}
