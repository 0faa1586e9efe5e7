import type {
  ApiExposedPort,
  ApiNetworkState,
  ApiTunnel,
  NetworkEvent,
  NetworkPolicy,
  NetworkPolicyInput,
} from "@codecourier/protocol/network";
import type { ApiClient, RequestOptions } from "./client.js";
import { CodeCourierError, errorFromResponse } from "./errors.js";
import { readNdjson } from "./ndjson.js";

export type { ApiExposedPort as ExposedPort, ApiNetworkState as NetworkState, ApiTunnel as Tunnel, NetworkEvent, NetworkPolicy, NetworkPolicyInput };

/** A line of the server's network event stream. */
type EventLine = NetworkEvent | { type: "ready" } | { type: "error"; status?: number; error?: { code?: string; message?: string } };

export interface NetworkEventsOptions extends RequestOptions {
  /** Keep the stream open and deliver new events as they happen (until `signal` aborts). Default false. */
  follow?: boolean;
}

/**
 * `sandbox.network`: the sandbox's default-deny egress policy, tunnels to private services, exposed ports and the
 * events of its connection attempts. Policy entries are strings: `api.github.com`, `*.npmjs.org` (strict
 * subdomains), `10.0.0.0/8`, `*` (any public address), each with an optional `:port` or `:low-high`.
 * Changes apply to new connections at once; open connections stay as they are.
 */
export class SandboxNetwork {
  readonly #client: ApiClient;
  readonly #path: string;

  constructor(client: ApiClient, sandboxPath: string) {
    this.#client = client;
    this.#path = `${sandboxPath}/network`;
  }

  /** Lets the sandbox reach these destinations (added to its allow list). Returns the policy now in force. */
  async allow(...entries: string[]): Promise<NetworkPolicy> {
    return this.#change({ allow: entries });
  }

  /** Keeps the sandbox from these destinations, whatever the allow list says. Returns the policy now in force. */
  async deny(...entries: string[]): Promise<NetworkPolicy> {
    return this.#change({ deny: entries });
  }

  /** Removes entries from the allow list (`list: "allow"`, default) or the deny list. */
  async remove(entries: string[], list: "allow" | "deny" = "allow"): Promise<NetworkPolicy> {
    return this.#change(list === "allow" ? { removeAllow: entries } : { removeDeny: entries });
  }

  /** The policy in force; with an argument, replaces it first. */
  async policy(replacement?: NetworkPolicyInput, options: RequestOptions = {}): Promise<NetworkPolicy> {
    if (replacement === undefined) return (await this.state(options)).policy;
    return this.#client.request<NetworkPolicy>("PUT", `${this.#path}/policy`, { body: replacement, signal: options.signal });
  }

  /** Policy, tunnels, exposed ports (their tokens are only given by expose()) and packets dropped by kind. */
  async state(options: RequestOptions = {}): Promise<ApiNetworkState> {
    return this.#client.request<ApiNetworkState>("GET", this.#path, options);
  }

  /**
   * Makes exactly `target` (host:port of the server's network) reachable inside the sandbox as `name:port`, and
   * nothing else of that network.
   */
  async tunnel(request: { name: string; target: string }, options: RequestOptions = {}): Promise<ApiTunnel> {
    return this.#client.request<ApiTunnel>("POST", `${this.#path}/tunnels`, { body: request, signal: options.signal });
  }

  async removeTunnel(name: string, options: RequestOptions = {}): Promise<void> {
    await this.#client.request("DELETE", `${this.#path}/tunnels/${encodeURIComponent(name)}`, options);
  }

  /**
   * A URL outside the sandbox for a guest port (HTTP and WebSocket; the service must listen on 0.0.0.0). Unless
   * `public`, requests need the header `X-CodeCourier-Token: <token>`. Exposing a port again gives a new token.
   */
  async expose(port: number, options: { public?: boolean } & RequestOptions = {}): Promise<ApiExposedPort> {
    return this.#client.request<ApiExposedPort>("POST", `${this.#path}/exposed`, {
      body: { port, public: options.public ?? false },
      signal: options.signal,
    });
  }

  async unexpose(port: number, options: RequestOptions = {}): Promise<void> {
    await this.#client.request("DELETE", `${this.#path}/exposed/${port}`, options);
  }

  /**
   * The sandbox's connection attempts (allowed or denied, with the rule that decided), DNS questions and dropped
   * packets: the kept ones, then with `follow` new ones as they happen.
   */
  async *events(options: NetworkEventsOptions = {}): AsyncGenerator<NetworkEvent> {
    const query = new URLSearchParams({ follow: options.follow ? "true" : "false" });
    const response = await this.#client.raw("GET", `${this.#path}/events`, { query, signal: options.signal });
    if (response.body === null) throw new CodeCourierError("the server answered without a body", { code: "internal" });
    for await (const line of readNdjson<EventLine>(response.body)) {
      if (line.type === "ready") continue;
      if (line.type === "error") throw errorFromResponse(line.status ?? 500, JSON.stringify({ error: line.error }));
      yield line;
    }
  }

  async #change(change: Record<string, string[]>): Promise<NetworkPolicy> {
    return this.#client.request<NetworkPolicy>("POST", `${this.#path}/policy`, { body: change });
  }
}
