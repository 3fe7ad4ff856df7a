/** Prometheus view of this member's Raft state (from the status housekeeping keeps fresh). */
import { Gauge, type Registry } from 'prom-client';
import type { Cluster } from './cluster.js';

export function registerClusterMetrics(registry: Registry, cluster: Cluster): void {
  const gauge = (name: string, help: string, read: (c: Cluster) => number | undefined) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        const v = read(cluster);
        if (v !== undefined) this.set(v);
      },
    });
  gauge('novacron_raft_term', 'Current Raft term', (c) => c.lastStatus?.term);
  gauge('novacron_raft_is_leader', '1 if this member is the Raft leader', (c) => (c.lastStatus ? Number(c.lastStatus.role === 'leader') : undefined));
  gauge('novacron_raft_leader_id', 'Member id of the known leader (0 when none)', (c) => c.lastStatus?.leader);
  gauge('novacron_raft_commit_index', 'Raft commit index', (c) => c.lastStatus?.commit);
  gauge('novacron_raft_applied_index', 'Raft applied index', (c) => c.lastStatus?.applied);
  gauge('novacron_raft_log_entries', 'Entries kept in the Raft log (last - first + 1)', (c) => (c.lastStatus ? c.lastStatus.lastIndex - c.lastStatus.firstIndex + 1 : undefined));
  gauge('novacron_raft_voters', 'Voting members', (c) => c.lastStatus?.voters.length);
  gauge('novacron_raft_learners', 'Learners', (c) => c.lastStatus?.learners.length);
  gauge('novacron_raft_peers_connected', 'Peers this member has an open connection to', (c) => c.transport.peers().filter((p) => p.connected).length);
  new Gauge({
    name: 'novacron_raft_peer_matched_index',
    help: 'Highest index replicated on each member, as the leader sees it (leader only)',
    labelNames: ['member'],
    registers: [registry],
    collect() {
      this.reset();
      for (const p of cluster.lastStatus?.progress ?? []) this.set({ member: String(p.id) }, p.matched);
    },
  });
  new Gauge({
    name: 'novacron_raft_refused_total',
    help: 'Peer connections or messages refused, by reason (auth, cluster, message)',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      for (const [reason, n] of cluster.refusedMessages) this.set({ reason }, n);
    },
  });
}
