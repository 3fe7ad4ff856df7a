//! Raft clusters of real nodes on real RocksDB, in one process, with a network the test
//! controls. (Multi-process fault tests with kill -9 live in the TypeScript suite.)

mod harness;

use harness::*;
use novacron_raftstore::eraftpb::{EntryType, MessageType};
use novacron_raftstore::{
    Command, Fence, MemberChange, Op, Outcome, RaftError, Request, RequestId,
};
use std::sync::atomic::Ordering;
use std::time::Duration;

#[test]
fn single_node_commits_and_keeps_its_state_across_restart() {
    let c = Cluster::new();
    c.bootstrap(1);
    let node = c.start(1);
    node.campaign();
    assert_eq!(c.leader(), 1);
    for i in 0..50 {
        assert!(matches!(
            put(&node, &format!("k{i}"), &format!("v{i}")),
            Outcome::Written { .. }
        ));
    }
    assert_eq!(read(&node, "k49").unwrap().as_deref(), Some("v49"));
    let before = c.status(1);
    c.stop(1);

    let node = c.start(1);
    let after = c.status(1);
    assert!(after.applied >= before.applied, "{after:?} vs {before:?}");
    assert_eq!(after.term, before.term);
    assert_eq!(get(&node, "k0").as_deref(), Some("v0"));
    // A one-member cluster elects itself again without help.
    assert_eq!(c.leader(), 1);
    put(&node, "after-restart", "yes");
    assert_eq!(
        read(&node, "after-restart").unwrap().as_deref(),
        Some("yes")
    );
}

#[test]
fn bootstrap_refuses_a_node_that_already_has_state() {
    let c = Cluster::new();
    c.bootstrap(1);
    let err = novacron_raftstore::bootstrap(&c.path(1), 1, "x", &c.options).unwrap_err();
    assert_eq!(err.code(), "RAFT_INVALID");
}

#[test]
fn three_nodes_replicate_writes_made_through_any_member() {
    let c = Cluster::new();
    c.form(&[1, 2, 3]);
    let st = c.status(c.leader());
    assert_eq!(st.voters, vec![1, 2, 3]);
    assert!(st.learners.is_empty());
    assert_eq!(st.addresses.len(), 3, "{st:?}");
    // A learner catches up by snapshot: node 1's log starts after the bootstrap snapshot.
    assert!(c.net.snapshots_delivered.load(Ordering::Relaxed) >= 2);

    let leader = c.leader();
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    put(&c.node(follower), "from-follower", "1");
    put(&c.node(leader), "from-leader", "2");
    for id in [1, 2, 3] {
        let node = c.node(id);
        assert_eq!(
            read(&node, "from-follower").unwrap().as_deref(),
            Some("1"),
            "node {id}"
        );
        assert_eq!(
            read(&node, "from-leader").unwrap().as_deref(),
            Some("2"),
            "node {id}"
        );
    }
}

#[test]
fn a_new_leader_takes_over_and_the_old_one_catches_up_on_return() {
    let c = Cluster::new();
    c.form(&[1, 2, 3]);
    let old = c.leader();
    put(&c.node(old), "before", "1");
    c.stop(old);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    let new = c.leader_among(&rest);
    assert_ne!(new, old);
    put(&c.node(new), "during", "2");

    c.start(old);
    let commit = c.status(new).commit;
    c.wait_applied(old, commit);
    assert_eq!(get(&c.node(old), "before").as_deref(), Some("1"));
    assert_eq!(get(&c.node(old), "during").as_deref(), Some("2"));
}

#[test]
fn a_partitioned_leader_commits_nothing_and_rejoins_consistent() {
    let c = Cluster::new();
    c.form(&[1, 2, 3]);
    let old = c.leader();
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    c.isolate(old, &rest);

    // The minority side cannot commit: the write times out (check_quorum also makes the
    // old leader step down, after which it refuses with NO_LEADER).
    let lost = propose(&c.node(old), put_request("minority", "x"));
    assert!(
        matches!(lost, Err(RaftError::Timeout(_) | RaftError::NoLeader)),
        "{lost:?}"
    );
    // Nor can it serve a linearizable read.
    assert!(read(&c.node(old), "minority").is_err());

    let new = c.leader_among(&rest);
    put(&c.node(new), "majority", "y");

    c.heal();
    let commit = c.status(new).commit;
    for id in [1, 2, 3] {
        c.wait_applied(id, commit);
    }
    let agreed = c.leader();
    for id in [1, 2, 3] {
        let node = c.node(id);
        assert_eq!(
            read(&node, "minority").unwrap(),
            None,
            "node {id} has the minority write"
        );
        assert_eq!(
            read(&node, "majority").unwrap().as_deref(),
            Some("y"),
            "node {id}"
        );
    }
    assert_ne!(agreed, 0);
}

#[test]
fn a_node_that_missed_a_compaction_catches_up_by_snapshot() {
    let mut c = Cluster::new();
    c.config.compact_threshold = 40;
    c.config.keep_entries = 10;
    c.form(&[1, 2, 3]);
    let leader = c.leader();
    let lagging = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    c.stop(lagging);
    let snapshots_before = c.net.snapshots_delivered.load(Ordering::Relaxed);
    for i in 0..200 {
        put(&c.node(leader), &format!("key{i:03}"), &format!("value{i}"));
    }
    let st = c.status(leader);
    assert!(st.first_index > 100, "the leader compacted its log: {st:?}");

    c.start(lagging);
    c.wait_applied(lagging, st.commit);
    assert!(c.net.snapshots_delivered.load(Ordering::Relaxed) > snapshots_before);
    let node = c.node(lagging);
    for i in [0, 99, 199] {
        assert_eq!(get(&node, &format!("key{i:03}")), Some(format!("value{i}")));
    }
    // And it keeps replicating from the log afterwards, surviving its own restart.
    put(&c.node(leader), "after", "snap");
    c.wait_applied(lagging, c.status(leader).commit);
    c.stop(lagging);
    let node = c.start(lagging);
    assert_eq!(get(&node, "after").as_deref(), Some("snap"));
    assert_eq!(get(&node, "key150").as_deref(), Some("value150"));
}

#[test]
fn joint_consensus_replaces_a_voter_and_leaves_the_joint_state() {
    let c = Cluster::new();
    c.form(&[1, 2, 3]);
    let leader = c.add_caught_up_learner(4);
    // Swap a follower for node 4 in one change: joint consensus, left automatically.
    let out = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    c.change_membership(
        leader,
        &[MemberChange::AddVoter(4), MemberChange::Remove(out)],
        vec![],
    );
    let mut expected: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&id| id != out).collect();
    expected.sort();
    let left_joint = wait_for(Duration::from_secs(10), || {
        let st = c.status(leader);
        let mut voters = st.voters.clone();
        voters.sort();
        voters == expected && st.learners.is_empty()
    });
    assert!(left_joint, "{:?}", c.status(leader));
    c.stop(out);
    put(&c.node(leader), "after-swap", "ok");
    assert_eq!(
        read(&c.node(4), "after-swap").unwrap().as_deref(),
        Some("ok")
    );
    assert!(
        !c.status(leader).addresses.iter().any(|(id, _)| *id == out),
        "removed member's address is forgotten"
    );
}

/// raft-rs leaves a joint configuration by the leader proposing an empty ConfChangeV2
/// once the joint one is applied. Here the leader enters the joint state, its "leave"
/// never reaches anyone, and it is cut off: the next leader (elected by majorities of
/// both the old and the new voters) must finish the change.
#[test]
fn a_leader_lost_in_the_middle_of_a_joint_change_is_finished_by_the_next_leader() {
    let c = Cluster::new();
    c.form(&[1, 2, 3]);
    let old = c.add_caught_up_learner(4);

    // The auto-leave entry is an empty ConfChangeV2; keep it from leaving the old leader.
    c.drop_messages(move |m| {
        m.from == old
            && m.get_msg_type() == MessageType::MsgAppend
            && m.get_entries().iter().any(|e| {
                e.get_entry_type() == EntryType::EntryConfChangeV2 && e.get_data().is_empty()
            })
    });
    let out = [1, 2, 3].into_iter().find(|&id| id != old).unwrap();
    let keep = [1, 2, 3]
        .into_iter()
        .find(|&id| id != old && id != out)
        .unwrap();
    c.change_membership(
        old,
        &[MemberChange::AddVoter(4), MemberChange::Remove(out)],
        vec![],
    );
    // Everyone else applied the joint configuration and is stuck in it.
    for id in [keep, out, 4] {
        assert!(
            wait_for(Duration::from_secs(5), || !c
                .status(id)
                .voters_outgoing
                .is_empty()),
            "member {id} entered the joint state: {:?}",
            c.status(id)
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !c.status(keep).voters_outgoing.is_empty(),
        "the leave entry was dropped"
    );

    c.isolate(old, &[keep, out, 4]);
    let elected = wait_for(Duration::from_secs(10), || {
        ![0, old].contains(&c.status(keep).leader)
    });
    assert!(elected, "a new leader among the rest: {:?}", c.status(keep));
    let mut expected = vec![old, keep, 4];
    expected.sort();
    let left = wait_for(Duration::from_secs(10), || {
        let st = c.status(keep);
        let mut voters = st.voters.clone();
        voters.sort();
        st.voters_outgoing.is_empty() && voters == expected
    });
    assert!(left, "the joint state was left: {:?}", c.status(keep));
    // The new leader may have been `out` itself: removed, it hands leadership over.
    let current = c.leader_among(&[keep, 4]);
    put(&c.node(current), "after-joint", "ok");

    // The old leader comes back, drops its unsent leave entry and agrees.
    c.heal();
    let commit = c.status(current).commit;
    c.wait_applied(old, commit);
    let st = c.status(old);
    assert!(st.voters_outgoing.is_empty(), "{st:?}");
    assert_eq!(
        read(&c.node(old), "after-joint").unwrap().as_deref(),
        Some("ok")
    );
    c.stop(out);
    put(
        &c.node(c.leader_among(&[old, keep, 4])),
        "without-out",
        "ok",
    );
}

/// raft-rs leaves a leader that removed itself in charge, heartbeating, so the others
/// would never elect anyone; the node hands leadership over instead.
#[test]
fn a_leader_that_removes_itself_hands_over_leadership() {
    let c = Cluster::new();
    c.form(&[1, 2, 3]);
    let old = c.leader();
    c.change_membership(old, &[MemberChange::Remove(old)], vec![]);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    let new = c.leader_among(&rest);
    assert_ne!(new, old);
    put(&c.node(new), "after-removal", "ok");
    let st = c.status(new);
    assert_eq!(st.voters.len(), 2, "{st:?}");
    // The removed leader hears from nobody; it gives up the lead on its own.
    assert!(
        wait_for(Duration::from_secs(10), || c.status(old).role != "leader"),
        "{:?}",
        c.status(old)
    );
}

#[test]
fn a_member_address_change_is_replicated_and_ignored_for_strangers() {
    let c = Cluster::new();
    c.form(&[1, 2, 3]);
    let leader = c.leader();
    let set = |member: u64, address: &str| {
        propose(
            &c.node(leader),
            Request {
                id: RequestId::random(),
                command: Command::SetAddress {
                    member,
                    address: address.into(),
                },
            },
        )
        .unwrap()
    };
    set(2, "10.0.0.2:7700");
    set(99, "10.0.0.99:7700");
    c.wait_applied(3, c.status(leader).commit);
    let addresses = c.status(3).addresses;
    assert!(
        addresses.contains(&(2, "10.0.0.2:7700".into())),
        "{addresses:?}"
    );
    assert!(!addresses.iter().any(|(id, _)| *id == 99), "{addresses:?}");
    let bad = propose(
        &c.node(leader),
        Request {
            id: RequestId::random(),
            command: Command::SetAddress {
                member: 2,
                address: String::new(),
            },
        },
    );
    assert!(matches!(bad, Err(RaftError::Invalid(_))), "{bad:?}");
}

#[test]
fn a_retried_request_is_applied_once() {
    let c = Cluster::new();
    c.form(&[1, 2, 3]);
    let leader = c.node(c.leader());
    let req = put_request("counter", "1");
    let first = propose(&leader, req.clone()).unwrap();
    // Something else changes the key; then the client "retries" its first request.
    put(&leader, "counter", "2");
    let retry = propose(&leader, req).unwrap();
    assert_eq!(first, retry, "the retry gets the first outcome");
    assert_eq!(
        read(&leader, "counter").unwrap().as_deref(),
        Some("2"),
        "the retry did not apply again"
    );
}

#[test]
fn locks_grant_hold_expire_and_fence_stale_holders() {
    let c = Cluster::new();
    c.form(&[1, 2, 3]);
    let leader = c.node(c.leader());
    let acquire = |holder: &str, now_ms: u64| {
        propose(
            &leader,
            Request {
                id: RequestId::random(),
                command: Command::Acquire {
                    lock: "vm/web".into(),
                    holder: holder.into(),
                    ttl_ms: 1000,
                    now_ms,
                },
            },
        )
        .unwrap()
    };
    let fenced_put = |value: &str, token: u64| {
        propose(
            &leader,
            Request {
                id: RequestId::random(),
                command: Command::Write {
                    ops: vec![Op::Put {
                        key: b"vm/web/state".to_vec(),
                        value: value.into(),
                    }],
                    fence: Some(Fence {
                        lock: "vm/web".into(),
                        token,
                    }),
                },
            },
        )
        .unwrap()
    };

    let Outcome::Granted { token: t1, .. } = acquire("a", 10_000) else {
        panic!("a should get the free lock")
    };
    assert!(
        matches!(acquire("b", 10_500), Outcome::Held { ref holder, token, .. } if holder == "a" && token == t1)
    );
    // Renewal by the holder keeps its token.
    assert!(matches!(acquire("a", 10_600), Outcome::Granted { token, .. } if token == t1));
    assert!(matches!(fenced_put("by-a", t1), Outcome::Written { .. }));

    // a's lease (renewed to 11,600) runs out; b takes the lock with a larger token.
    let Outcome::Granted { token: t2, .. } = acquire("b", 11_700) else {
        panic!("b should get the expired lock")
    };
    assert!(t2 > t1);
    // a, paused through its expiry, wakes up and writes with its stale token: refused.
    assert_eq!(
        fenced_put("by-a-late", t1),
        Outcome::Fenced { current: Some(t2) }
    );
    assert!(matches!(fenced_put("by-b", t2), Outcome::Written { .. }));
    assert_eq!(
        read(&leader, "vm/web/state").unwrap().as_deref(),
        Some("by-b")
    );

    let release = |token: u64| {
        propose(
            &leader,
            Request {
                id: RequestId::random(),
                command: Command::Release {
                    lock: "vm/web".into(),
                    token,
                },
            },
        )
        .unwrap()
    };
    assert_eq!(release(t1), Outcome::NotHeld);
    assert_eq!(release(t2), Outcome::Released);
    // Every replica agrees on the lock table.
    let commit = c.status(c.leader()).commit;
    for id in [1, 2, 3] {
        c.wait_applied(id, commit);
        assert_eq!(c.node(id).lock("vm/web").unwrap(), None);
    }
}

#[test]
fn bad_requests_and_messages_are_refused_with_codes() {
    let c = Cluster::new();
    c.form(&[1]);
    let node = c.node(1);
    let empty = Request {
        id: RequestId::random(),
        command: Command::Write {
            ops: vec![],
            fence: None,
        },
    };
    assert_eq!(propose(&node, empty).unwrap_err().code(), "RAFT_INVALID");
    let not_utf8 = Request {
        id: RequestId::random(),
        command: Command::Write {
            ops: vec![Op::Put {
                key: vec![0xff, 0x01],
                value: vec![],
            }],
            fence: None,
        },
    };
    assert_eq!(propose(&node, not_utf8).unwrap_err().code(), "RAFT_INVALID");
    let huge = put_request("big", &"x".repeat(2 << 20));
    assert_eq!(propose(&node, huge).unwrap_err().code(), "RAFT_INVALID");
    assert_eq!(
        node.step(b"\xff\xff\xffnot protobuf", 2)
            .unwrap_err()
            .code(),
        "RAFT_BAD_MESSAGE"
    );
    let mut msg = novacron_raftstore::eraftpb::Message {
        to: 9,
        from: 2,
        ..Default::default()
    };
    assert_eq!(
        node.step(&novacron_raftstore::encode_message(&msg), 2)
            .unwrap_err()
            .code(),
        "RAFT_BAD_MESSAGE"
    );
    // Addressed right, but its sender field names another member than the connection's.
    msg.to = 1;
    msg.set_msg_type(novacron_raftstore::eraftpb::MessageType::MsgHeartbeat);
    let impostor = node
        .step(&novacron_raftstore::encode_message(&msg), 3)
        .unwrap_err();
    assert_eq!(impostor.code(), "RAFT_BAD_MESSAGE");
    assert!(
        impostor.to_string().contains("member 3's connection"),
        "{impostor}"
    );
    msg.set_msg_type(novacron_raftstore::eraftpb::MessageType::MsgHup);
    assert_eq!(
        node.step(&novacron_raftstore::encode_message(&msg), 2)
            .unwrap_err()
            .code(),
        "RAFT_BAD_MESSAGE"
    );
    let bad_change = call(|done| node.change_membership(&[], vec![], done));
    assert_eq!(bad_change.unwrap_err().code(), "RAFT_INVALID");
    // Still healthy.
    put(&node, "ok", "1");
    assert_eq!(read(&node, "ok").unwrap().as_deref(), Some("1"));
}

#[test]
fn requests_to_a_stopped_node_fail_with_stopped() {
    let c = Cluster::new();
    c.form(&[1]);
    let node = c.node(1);
    c.stop(1);
    assert_eq!(
        propose(&node, put_request("k", "v")).unwrap_err().code(),
        "RAFT_STOPPED"
    );
    assert_eq!(
        call(|done| node.read_index(done)).unwrap_err().code(),
        "RAFT_STOPPED"
    );
}

#[test]
fn a_proposal_forwarded_to_a_dead_leader_is_sent_again_to_the_next_one() {
    let mut c = Cluster::new();
    c.config.request_timeout = Duration::from_secs(10);
    c.form(&[1, 2, 3]);
    let old = c.leader();
    let follower = [1, 2, 3].into_iter().find(|&id| id != old).unwrap();
    c.stop(old);
    // The follower still believes in the old leader and forwards to it; the message is lost.
    let started = std::time::Instant::now();
    let outcome = propose(&c.node(follower), put_request("forwarded", "1")).unwrap();
    assert!(matches!(outcome, Outcome::Written { .. }));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}: the proposal was not re-sent to the new leader",
        started.elapsed()
    );
    assert_eq!(
        read(&c.node(follower), "forwarded").unwrap().as_deref(),
        Some("1")
    );
}

/// raft-rs's read-only queue keys a ReadIndex request by its context and drops one whose
/// context is already pending, so contexts must be unique across the cluster: two members'
/// reads numbered alike once collided at the leader and one waited out its deadline.
#[test]
fn concurrent_reads_through_every_member_are_each_answered_promptly() {
    let c = Cluster::new();
    c.form(&[1, 2, 3]);
    put(&c.node(c.leader()), "k", "v");
    let (tx, rx) = std::sync::mpsc::channel();
    let start = std::time::Instant::now();
    let nodes: Vec<_> = [1, 2, 3].into_iter().map(|id| (id, c.node(id))).collect();
    let mut sent = 0;
    for _round in 0..20 {
        for (id, node) in &nodes {
            for _ in 0..10 {
                let tx = tx.clone();
                let id = *id;
                node.read_index(Box::new(move |r| {
                    let _ = tx.send((id, r.map_err(|e| e.code()), start.elapsed()));
                }));
                sent += 1;
            }
        }
    }
    drop(tx);
    let answers: Vec<_> = rx.iter().collect();
    assert_eq!(answers.len(), sent);
    let failed: Vec<_> = answers.iter().filter(|(_, r, _)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {sent} reads failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let slowest = answers.iter().map(|(_, _, t)| *t).max().unwrap();
    // The harness's request deadline is 3 s; a healthy in-process cluster answers in milliseconds.
    assert!(
        slowest < Duration::from_secs(1),
        "the slowest of {sent} reads took {slowest:?}"
    );
}

/// A new leader drops ReadIndex requests until it has committed an entry of its own term, so
/// reads sent to it as soon as it is known are lost: each member sends its pending reads
/// again once it sees an entry of the current term committed. Reads waiting on a follower
/// when the leader dies are then answered about as soon as writes are.
#[test]
fn reads_in_flight_when_the_leader_dies_are_answered_by_the_next_leader() {
    let mut c = Cluster::new();
    c.config.request_timeout = Duration::from_secs(10);
    c.form(&[1, 2, 3]);
    let old = c.leader();
    put(&c.node(old), "k", "v");
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    c.stop(old);
    let started = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads through both survivors while they still believe in the dead leader, and again
    // while they elect the next one.
    let mut sent = 0;
    for wave in 0..10 {
        for &id in &rest {
            let tx = tx.clone();
            c.node(id).read_index(Box::new(move |r| {
                let _ = tx.send((id, r.map_err(|e| e.code()), started.elapsed()));
            }));
            sent += 1;
        }
        if wave < 9 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(tx);
    let new = c.leader_among(&rest);
    let elected = started.elapsed();
    let answers: Vec<_> = rx.iter().collect();
    assert_eq!(answers.len(), sent);
    for (id, r, t) in &answers {
        // NO_LEADER is a fair answer while no leader is known; anything answered must be
        // answered by the time a leader is, plus a few heartbeats, not at the deadline.
        assert!(
            r.is_ok() || *r == Err("RAFT_NO_LEADER"),
            "read through {id}: {r:?} after {t:?}"
        );
        assert!(
            *t < elected + Duration::from_secs(1),
            "read through {id} answered after {t:?}; leader {new} known by {elected:?}"
        );
    }
    assert!(
        answers.iter().filter(|(_, r, _)| r.is_ok()).count() >= sent / 2,
        "{answers:?}"
    );
    assert_eq!(read(&c.node(new), "k").unwrap().as_deref(), Some("v"));
}
