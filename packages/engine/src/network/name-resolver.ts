/**
 * How the host turns a name into addresses for sandboxes: the operator's own map first (CODECOURIER_NETWORK_HOSTS,
 * for internal services published by name), then DNS through the host's resolvers — never /etc/hosts, which on most
 * hosts maps names to the host itself. Answers are cached for their TTL (at most a minute).
 */
import { promises as dns, type RecordWithTtl } from "node:dns";
import { parseIPv4 } from "./address-class.js";
import { normalizeName } from "./policy.js";

export interface ResolvedName {
  addresses: string[];
  /** From the operator's map: a name rule may then lead to a private address. */
  operatorMapped: boolean;
}

export class NameResolutionError extends Error {
  constructor(readonly hostname: string, reason: string) {
    super(`cannot resolve ${hostname}: ${reason}`);
    this.name = "NameResolutionError";
  }
}

const MAX_CACHE_SECONDS = 60;
const MAX_CACHED_NAMES = 10_000;

export class NameResolver {
  readonly #cache = new Map<string, { addresses: string[]; expires: number }>();
  readonly #dns = new dns.Resolver({ timeout: 2000, tries: 2 });

  constructor(readonly operatorHosts: ReadonlyMap<string, readonly string[]> = new Map()) {}

  /** The operator's map from `CODECOURIER_NETWORK_HOSTS`: "name=address[,name=address…]" (a name may repeat). */
  static fromEnvironment(env: NodeJS.ProcessEnv = process.env): NameResolver {
    return new NameResolver(parseOperatorHosts(env.CODECOURIER_NETWORK_HOSTS ?? ""));
  }

  async resolve(name: string): Promise<ResolvedName> {
    const mapped = this.operatorHosts.get(name);
    if (mapped) return { addresses: [...mapped], operatorMapped: true };
    const cached = this.#cache.get(name);
    if (cached && cached.expires > Date.now()) return { addresses: cached.addresses, operatorMapped: false };
    let records: RecordWithTtl[];
    try {
      records = await this.#dns.resolve4(name, { ttl: true });
    } catch (error) {
      throw new NameResolutionError(name, (error as NodeJS.ErrnoException).code ?? String(error));
    }
    const addresses = records.map((record) => record.address);
    const ttl = Math.min(MAX_CACHE_SECONDS, ...records.map((record) => record.ttl));
    if (this.#cache.size >= MAX_CACHED_NAMES) this.#cache.clear();
    this.#cache.set(name, { addresses, expires: Date.now() + ttl * 1000 });
    return { addresses, operatorMapped: false };
  }
}

export function parseOperatorHosts(spec: string): Map<string, string[]> {
  const hosts = new Map<string, string[]>();
  for (const item of spec.split(",").map((s) => s.trim()).filter(Boolean)) {
    const [rawName, address] = item.split("=");
    const name = normalizeName(rawName ?? "");
    if (!name || !address || !parseIPv4(address)) {
      throw new Error(`CODECOURIER_NETWORK_HOSTS: "${item}" is not name=IPv4-address`);
    }
    hosts.set(name, [...(hosts.get(name) ?? []), address]);
  }
  return hosts;
}
