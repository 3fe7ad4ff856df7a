/** Tenant quotas: `/v1/tenants/:tenant/quota` (limits and the cluster-wide usage). */
import { TenantName } from '../../auth/acl.js';
import { QuotaLimits, type Quotas } from '../../cluster/quotas.js';
import type { ApiRequest, Router } from '../router.js';
import type { Target } from '../access.js';
import { parseWith } from '../validate.js';

const onTenant = (req: ApiRequest): Target => ({ kind: 'tenant', tenant: String(req.params.tenant) });

export function quotaRoutes(router: Router, quotas: Quotas): void {
  const tenant = (req: ApiRequest) => parseWith(TenantName, req.params.tenant, 'BAD_QUERY');
  router.add('GET', '/v1/tenants/:tenant/quota', async (req) => ({ status: 200, json: await quotas.get(tenant(req)) }), { priv: 'VM.Audit', on: onTenant });
  router.add('PUT', '/v1/tenants/:tenant/quota', async (req) => {
    const t = tenant(req);
    await quotas.setLimits(t, parseWith(QuotaLimits, req.body ?? {}));
    return { status: 200, json: await quotas.get(t) };
  }, { priv: 'Sys.Modify', body: true });
  router.add('DELETE', '/v1/tenants/:tenant/quota', async (req) => {
    await quotas.setLimits(tenant(req), undefined);
    return { status: 204 };
  }, { priv: 'Sys.Modify' });
}
