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

/** The cluster member a migration names by id or node name: its id and API address (`https://host:port`). */
export type MemberResolver = (member: string) => Promise<{ member: number; url: string }>;
/** The member of this cluster reached at an API address, if one is. */
export type MemberCheck = (address: string) => Promise<number | undefined>;

export function migrationRoutes(router: Router, migrations: MigrationService, resolveMember: MemberResolver, isMember: MemberCheck): void {
  router.add('POST', '/v1/vms/:id/migrate', async (req) => {
    const { targetToken, ...body } = parseWith(MigrateRequest, req.body ?? {});
    const named = isDaemonAddress(body.target) ? { url: body.target, member: await isMember(body.target) } : await resolveMember(body.target);
    // A daemon outside the cluster: only an administrator sends a VM there, with a token
    // that daemon gave them. Inside the cluster, members vouch for themselves by certificate.
    if (named.member === undefined) {
      req.principal!.assertCan('Sys.Modify', ROOT);
      if (!targetToken) throw new NovaError('VALIDATION_FAILED', `${body.target} is not a member of this cluster: pass targetToken, a token that daemon accepts`);
    }
    const r = await migrations.migrate(req.params.id!, { ...body, target: named.url }, named.member === undefined ? { token: targetToken! } : { member: named.member });
    if (!r.started) return { status: 200, json: { dryRun: true, prediction: r.prediction } };
    return { status: 202, json: r.migration, headers: { location: `/v1/migrations/${r.migration!.id}` } };
  }, { priv: 'VM.Migrate', on: (req) => ({ kind: 'vm-ref', ref: req.params.id! }), body: true, forward: 'vm' });
  const ListQuery = z.strictObject(PageQuery);
  // Newest first; `cursor` is the last id of the previous page.
  router.add('GET', '/v1/migrations', (req) => ({ status: 200, json: page(migrations.list(), (m) => m.id, parseWith(ListQuery, Object.fromEntries(req.query), 'BAD_QUERY'), 'desc') }), { priv: 'VM.Audit' });
  router.add('GET', '/v1/migrations/:id', (req) => ({ status: 200, json: migrations.get(req.params.id!) }), { priv: 'VM.Audit', on: onMigration, forward: 'migration' });
  router.add('DELETE', '/v1/migrations/:id', (req) => ({ status: 202, json: migrations.cancel(req.params.id!) }), { priv: 'VM.Migrate', on: onMigration, forward: 'migration' });
  // Daemon to daemon: the source offers a VM; the answer says where to stream it.
  router.add('POST', '/v1/migrations/incoming', async (req) => ({ status: 201, json: await migrations.acceptIncoming(parseWith(IncomingRequest, req.body), req.principal?.member) }), { priv: 'VM.Migrate', body: true });
}
