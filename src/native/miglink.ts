/**
 * Typed wrappers over the live-migration data path (crates/miglink). Both ends run on
 * their own threads: the JavaScript thread only starts them, reads their counters and
 * hears of the first failure (as a NovaError with the Rust side's stable code).
 */
import type { NovaError } from '../errors.js';
import { formatHostPort } from '../util/host-port.js';
import { binding, callNative, fromBindingError, type Binding } from './binding.js';

/** Counters of one end of a migration link. */
export interface LinkCounters {
  /** Bytes of QEMU's stream (before the codec). */
  rawBytes: number;
  /** Bytes on the link (after the codec). */
  wireBytes: number;
  pages: number;
  packets: number;
}
type OnFail = (err: NovaError) => void;

function toError(f: Binding.BindingError): NovaError {
  return fromBindingError(f, 'MIGRATION_TRANSPORT');
}

function failure(onFail: OnFail): (f: Binding.BindingError) => void {
  return (f) => onFail(toError(f));
}

/** The link's bandwidth cap on bytes on the wire, shared by all of one migration's streams. */
export class LinkBucket {
  readonly native: Binding.NativeLinkBucket;

  constructor(bytesPerSecond: number) {
    this.native = new binding.NativeLinkBucket(bytesPerSecond);
  }

  /** Records `bytes` sent; returns the ms to wait before sending more (0: none). */
  spend(bytes: number): number {
    return this.native.spend(bytes);
  }
}

export interface SourceLinkOptions {
  /** Unix socket QEMU migrates to. */
  socketPath: string;
  /** The destination's data listener. */
  host: string;
  port: number;
  /**
   * The destination's certificate fingerprint (`AB:CD:…`, SHA-256): the link's TLS accepts
   * only that certificate. `null`: plain TCP — bench/migration's unencrypted baseline only;
   * the daemon always pins.
   */
  certSha256: string | null;
  token: Buffer;
  capacityPages: number;
  shards: number;
  /** Per-channel flow-control window, bytes. */
  window: number;
  bucket?: LinkBucket;
  faults?: LinkFaults;
}

/** Fault injection for tests: corrupt the Nth RAM packet's page batch; cut the link after N bytes. */
export interface LinkFaults {
  corruptPagesFrame?: number;
  cutAfterBytes?: number;
}

/** What both ends offer once started. */
abstract class LinkEnd {
  protected abstract readonly native: Binding.NativeSourceLink | Binding.NativeDestLink;

  stats(): LinkCounters {
    return this.native.stats();
  }

  /** The first failure, read synchronously: it is recorded before its consequences show. */
  failure(): NovaError | undefined {
    const f = this.native.failure();
    return f ? toError(f) : undefined;
  }

  close(): void {
    this.native.close();
  }
}

export class SourceLink extends LinkEnd {
  protected readonly native: Binding.NativeSourceLink;

  /** Connects to the destination and listens for QEMU; throws MIGRATION_TRANSPORT if it cannot. */
  constructor(o: SourceLinkOptions, onFail: OnFail) {
    super();
    this.native = callNative(() =>
      binding.NativeSourceLink.start(
        {
          socketPath: o.socketPath, dest: formatHostPort(o.host, o.port), token: o.token, ...(o.certSha256 !== null ? { destCertSha256: Buffer.from(o.certSha256.replaceAll(':', ''), 'hex') } : {}),
          capacityPages: o.capacityPages, shards: o.shards, window: o.window,
          ...(o.faults?.corruptPagesFrame !== undefined ? { corruptPagesFrame: o.faults.corruptPagesFrame } : {}),
          ...(o.faults?.cutAfterBytes !== undefined ? { cutAfterBytes: o.faults.cutAfterBytes } : {}),
        },
        o.bucket?.native,
        failure(onFail),
      ),
    );
  }
}

export interface DestLinkOptions {
  bindHost: string;
  /** Ports to listen on, first free one wins; absent: one the system picks. */
  ports?: { from: number; to: number };
  /** The destination QEMU's incoming unix socket. */
  qemuSocket: string;
  token: Buffer;
  /** This member's certificate and key (PEM), which the link's TLS serves. `null`: plain TCP (bench/migration's unencrypted baseline only). */
  tls: { certPem: string; keyPem: string } | null;
  capacityPages: number;
  shards: number;
}

export class DestLink extends LinkEnd {
  protected readonly native: Binding.NativeDestLink;

  /** Listens for the migration's source on a system-chosen port (`port`). */
  constructor(o: DestLinkOptions, onFail: OnFail) {
    super();
    const { ports, tls, ...rest } = o;
    this.native = callNative(() => binding.NativeDestLink.start({ ...rest, ...(tls ? { certPem: tls.certPem, keyPem: tls.keyPem } : {}), ...(ports ? { portFrom: ports.from, portTo: ports.to } : {}) }, failure(onFail)));
  }

  get port(): number {
    return this.native.port;
  }
}
