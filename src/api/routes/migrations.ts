import type { Router } from '../router.js';
import { parseWith } from '../validate.js';
import { IncomingRequest } from '../../migration/incoming.js';
import { isDaemonAddress, MigrateRequest } from '../../migration/record.js';
import type { MigrationService } from '../../migration/service.js';

/** The API address (`http://host:port`) of the cluster member a migration names by id or node name. */
export type MemberResolver = (member: string) => Promise<string>;

export function migrationRoutes(router: Router, migrations: MigrationService, resolveMember: MemberResolver): void {
  router.add('POST', '/v1/vms/:id/migrate', async (req) => {
    const body = parseWith(MigrateRequest, req.body ?? {});
    const target = isDaemonAddress(body.target) ? body.target : await resolveMember(body.target);
    const r = await migrations.migrate(req.params.id!, { ...body, target });
    if (!r.started) return { status: 200, json: { dryRun: true, prediction: r.prediction } };
    return { status: 202, json: r.migration, headers: { location: `/v1/migrations/${r.migration!.id}` } };
  }, { body: true, forward: 'vm' });
  router.add('GET', '/v1/migrations', () => ({ status: 200, json: { items: migrations.list() } }));
  router.add('GET', '/v1/migrations/:id', (req) => ({ status: 200, json: migrations.get(req.params.id!) }), { forward: 'migration' });
  router.add('DELETE', '/v1/migrations/:id', (req) => ({ status: 202, json: migrations.cancel(req.params.id!) }), { forward: 'migration' });
  // Daemon to daemon: the source offers a VM; the answer says where to stream it.
  router.add('POST', '/v1/migrations/incoming', async (req) => ({ status: 201, json: await migrations.acceptIncoming(parseWith(IncomingRequest, req.body)) }), { body: true });
}
