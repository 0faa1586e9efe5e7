/**
 * Counts every socket a sandbox causes the server to hold (the guest side and the upstream side of each proxied
 * connection, from accept and from the start of the dial; both sides of each exposed-port connection) and refuses
 * new ones past three limits: per sandbox, per tenant, and the whole process's file descriptors. A place is taken
 * before a socket exists and given back only when that socket has really closed ('close'), so a half-closed or
 * still-dialing connection counts as long as it holds a descriptor.
 *
 * The process-wide count is an estimate that costs nothing per connection: what the last readdir of /proc/self/fd
 * found (every descriptor: QEMU pipes, VM sockets, the database, the API's clients) plus the change in sockets held
 * here since then. The budget stays well under the soft RLIMIT_NOFILE, so refusing happens long before EMFILE.
 */
import type { Duplex } from "node:stream";

/** Sockets one sandbox may hold through the egress proxy and its exposed ports together (a relay holds two). */
export const DEFAULT_MAX_SOCKETS_PER_SANDBOX = 2048;
/** Sockets all sandboxes of one tenant may hold together. */
export const DEFAULT_MAX_SOCKETS_PER_TENANT = 8192;
/** Descriptors always left to the rest of the server (VMs, the API, the database): at least this many… */
const MIN_FD_RESERVE = 256;
/** …or this share of the soft limit, whichever is more. */
const FD_RESERVE_SHARE = 0.25;

export interface SocketOwner {
  sandboxId: string;
  /** Null for a sandbox whose tenant is not known to the network service (configured before tenants were recorded). */
  tenantId: string | null;
}

export interface SocketLimits {
  perSandbox: number;
  perTenant: number;
}

/** Why a new socket may not be opened: the rule for the connection event, and a sentence naming the limit. */
export interface LimitRefusal {
  rule: "limit:sandbox-sockets" | "limit:tenant-sockets" | "limit:server-fds";
  error: string;
}

/** The descriptors new sockets may bring the process up to, for a soft RLIMIT_NOFILE. */
export function fdBudgetFor(softLimit: number): number {
  return Math.max(0, softLimit - Math.max(MIN_FD_RESERVE, Math.ceil(softLimit * FD_RESERVE_SHARE)));
}

/** Places for sockets, taken together; each is given back when the socket bound to it closes, or by releaseUnbound(). */
export class SocketReservation {
  #unbound: number;

  constructor(
    count: number,
    private readonly giveBack: () => void,
  ) {
    this.#unbound = count;
  }

  /** The socket takes one of the places, until its 'close'. */
  bind(socket: Duplex): void {
    if (this.#unbound === 0) throw new Error("no place left in this socket reservation");
    this.#unbound--;
    if (socket.closed) this.giveBack();
    else socket.once("close", this.giveBack);
  }

  /** Places no socket was bound to (a connection refused before its dial) are given back now. */
  releaseUnbound(): void {
    for (; this.#unbound > 0; this.#unbound--) this.giveBack();
  }
}

export class SocketBudget {
  #held = 0;
  readonly #bySandbox = new Map<string, number>();
  readonly #byTenant = new Map<string, number>();
  #fdsAtScan = 0;
  #heldAtScan = 0;
  #fdBudget: number;
  #softLimit: number;

  constructor(
    readonly limits: SocketLimits,
    softLimit: number,
    /** An operator's fixed fd budget (CODECOURIER_FD_BUDGET); otherwise it follows the soft limit. */
    private readonly fixedFdBudget?: number,
  ) {
    this.#softLimit = softLimit;
    this.#fdBudget = fixedFdBudget ?? fdBudgetFor(softLimit);
  }

  /** Sockets held right now, all sandboxes together. */
  get held(): number {
    return this.#held;
  }

  heldBy(owner: SocketOwner): { sandbox: number; tenant: number } {
    return { sandbox: this.#bySandbox.get(owner.sandboxId) ?? 0, tenant: owner.tenantId === null ? 0 : (this.#byTenant.get(owner.tenantId) ?? 0) };
  }

  get fdBudget(): number {
    return this.#fdBudget;
  }

  estimatedOpenFds(): number {
    return Math.max(0, this.#fdsAtScan + this.#held - this.#heldAtScan);
  }

  /** What a scan of the process found: its open descriptors and its soft limit (which an operator may change). */
  observe(openFds: number, softLimit: number): void {
    this.#fdsAtScan = openFds;
    this.#heldAtScan = this.#held;
    this.#softLimit = softLimit;
    this.#fdBudget = this.fixedFdBudget ?? fdBudgetFor(softLimit);
  }

  /** A scan that could not even read /proc/self/fd (EMFILE, most likely): no new sockets until one succeeds. */
  observeFailedScan(): void {
    this.#fdsAtScan = this.#fdBudget;
    this.#heldAtScan = this.#held;
  }

  /** Places for `count` sockets of `owner`, all or none. */
  reserve(owner: SocketOwner, count: number): SocketReservation | LimitRefusal {
    const refusal = this.#refusal(owner, count);
    if (refusal) return refusal;
    this.#add(owner, count);
    let left = count;
    return new SocketReservation(count, () => {
      // A reservation gives back at most what it took, whatever its callers do.
      if (left === 0) return;
      left--;
      this.#add(owner, -1);
    });
  }

  #refusal(owner: SocketOwner, count: number): LimitRefusal | undefined {
    const held = this.heldBy(owner);
    if (held.sandbox + count > this.limits.perSandbox) {
      return { rule: "limit:sandbox-sockets", error: `this sandbox holds ${held.sandbox} sockets through the server, its limit is ${this.limits.perSandbox}` };
    }
    if (owner.tenantId !== null && held.tenant + count > this.limits.perTenant) {
      return { rule: "limit:tenant-sockets", error: `this tenant's sandboxes hold ${held.tenant} sockets through the server, its limit is ${this.limits.perTenant}` };
    }
    const fds = this.estimatedOpenFds();
    if (fds + count > this.#fdBudget) {
      return {
        rule: "limit:server-fds",
        error: `the server has about ${fds} file descriptors open, its budget for new connections is ${this.#fdBudget} (soft limit ${this.#softLimit})`,
      };
    }
    return undefined;
  }

  #add(owner: SocketOwner, delta: number): void {
    this.#held += delta;
    bump(this.#bySandbox, owner.sandboxId, delta);
    if (owner.tenantId !== null) bump(this.#byTenant, owner.tenantId, delta);
  }
}

function bump(counts: Map<string, number>, key: string, delta: number): void {
  const value = (counts.get(key) ?? 0) + delta;
  if (value <= 0) counts.delete(key);
  else counts.set(key, value);
}
