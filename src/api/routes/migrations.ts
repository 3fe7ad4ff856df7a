import type { ApiRequest, Router } from '../router.js';
import type { Target } from '../access.js';
import { ROOT } from '../../auth/acl.js';
import { NovaError } from '../../errors.js';

const onMigration = (req: ApiRequest): Target => ({ kind: 'migration', id: req.params.id! });
import { parseWith } from '../validate.js';
import { z } from 'zod';
import { page, PageQuery } from '../paging.js';
import { IncomingRequest } from '../../migration/incoming.js';
import { isDaemonAddress, MigrateRequest } from '../../migration/record.js';
import type { MigrationService } from '../../migration/service.js';

/** The API address (`http://host:port`) of the cluster member a migration names by id or node name. */
export type MemberResolver = (member: string) => Promise<string>;
/** Whether an API address is a member of this cluster. */
export type MemberCheck = (address: string) => Promise<boolean>;

export function migrationRoutes(router: Router, migrations: MigrationService, resolveMember: MemberResolver, isMember: MemberCheck): void {
  router.add('POST', '/v1/vms/:id/migrate', async (req) => {
    const { targetToken, ...body } = parseWith(MigrateRequest, req.body ?? {});
    const target = isDaemonAddress(body.target) ? body.target : await resolveMember(body.target);
    // A daemon outside the cluster: only an administrator sends a VM there, with a token
    // that daemon gave them. Inside the cluster, members present their own credentials.
    const outside = isDaemonAddress(body.target) && !(await isMember(body.target));
    if (outside) {
      req.principal!.assertCan('Sys.Modify', ROOT);
      if (!targetToken) throw new NovaError('VALIDATION_FAILED', `${body.target} is not a member of this cluster: pass targetToken, a token that daemon accepts`);
    }
    const r = await migrations.migrate(req.params.id!, { ...body, target }, outside ? targetToken : undefined);
    if (!r.started) return { status: 200, json: { dryRun: true, prediction: r.prediction } };
    return { status: 202, json: r.migration, headers: { location: `/v1/migrations/${r.migration!.id}` } };
  }, { priv: 'VM.Migrate', on: (req) => ({ kind: 'vm-ref', ref: req.params.id! }), body: true, forward: 'vm' });
  const ListQuery = z.strictObject(PageQuery);
  // Newest first; `cursor` is the last id of the previous page.
  router.add('GET', '/v1/migrations', (req) => ({ status: 200, json: page(migrations.list(), (m) => m.id, parseWith(ListQuery, Object.fromEntries(req.query), 'BAD_QUERY'), 'desc') }), { priv: 'VM.Audit' });
  router.add('GET', '/v1/migrations/:id', (req) => ({ status: 200, json: migrations.get(req.params.id!) }), { priv: 'VM.Audit', on: onMigration, forward: 'migration' });
  router.add('DELETE', '/v1/migrations/:id', (req) => ({ status: 202, json: migrations.cancel(req.params.id!) }), { priv: 'VM.Migrate', on: onMigration, forward: 'migration' });
  // Daemon to daemon: the source offers a VM; the answer says where to stream it.
  router.add('POST', '/v1/migrations/incoming', async (req) => ({ status: 201, json: await migrations.acceptIncoming(parseWith(IncomingRequest, req.body)) }), { priv: 'VM.Migrate', body: true });
}
