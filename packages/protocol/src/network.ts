/**
 * Network policy, tunnels, exposed ports and connection events: the shapes the API, SDK and CLI share.
 *
 * A policy is default-deny. Entries are strings, the same in the API, the SDK and the CLI:
 *   - a domain: `api.github.com` (that name only), `*.npmjs.org` (strict subdomains, not npmjs.org itself)
 *   - an address or CIDR: `10.0.0.5`, `10.0.0.0/8`
 *   - `*`: every public address (what `internet: true` allows)
 * each with an optional port or port range: `github.com:22`, `10.0.0.0/8:5432`, `*:443`, `*.example.com:8000-8999`.
 * `deny` entries win over `allow` entries. Whatever the entries say, a sandbox never reaches loopback, link-local
 * (the cloud metadata address included), multicast or the host's own addresses; private ranges only through an
 * address/CIDR entry or a tunnel, never through a domain or `*`.
 */
import { z } from "zod";

export const NETWORK_LIMITS = {
  maxPolicyEntries: 256,
  maxEntryLength: 300,
  maxTunnels: 32,
  maxExposedPorts: 32,
  /** Connection events a sandbox keeps for streams that start late. */
  maxKeptEvents: 1000,
} as const;

const policyEntry = z.string().min(1).max(NETWORK_LIMITS.maxEntryLength);
const policyEntries = z.array(policyEntry).max(NETWORK_LIMITS.maxPolicyEntries);

export const NetworkPolicySchema = z
  .object({
    /** Every public address (same as an allow entry `*`). Default false. */
    internet: z.boolean().default(false),
    allow: policyEntries.default([]),
    deny: policyEntries.default([]),
  })
  .strict();
export type NetworkPolicy = z.infer<typeof NetworkPolicySchema>;
export type NetworkPolicyInput = z.input<typeof NetworkPolicySchema>;

/** A change to a running sandbox's policy: entries added to or removed from either list. */
export const NetworkPolicyChangeSchema = z
  .object({
    internet: z.boolean().optional(),
    allow: policyEntries.optional(),
    deny: policyEntries.optional(),
    removeAllow: policyEntries.optional(),
    removeDeny: policyEntries.optional(),
  })
  .strict();
export type NetworkPolicyChange = z.infer<typeof NetworkPolicyChangeSchema>;

/** A tunnel name is what the guest resolves: a DNS label (or several), lower case. */
const tunnelName = z
  .string()
  .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/, "a tunnel name is a DNS name: a-z 0-9 - and dots")
  .max(253);

export const TunnelRequestSchema = z
  .object({
    /** The name the sandbox uses for the target, e.g. "db" → `db:5432` inside. */
    name: tunnelName,
    /** host:port on the host's network, e.g. "10.0.0.5:5432" or "db.internal:5432". */
    target: z.string().min(3).max(300),
  })
  .strict();
export type TunnelRequest = z.infer<typeof TunnelRequestSchema>;

export const TunnelSchema = z.object({ name: z.string(), target: z.string(), port: z.number().int() });
export type ApiTunnel = z.infer<typeof TunnelSchema>;

export const ExposeRequestSchema = z
  .object({
    port: z.number().int().min(1).max(65535),
    /** Reachable without the token. Default false. */
    public: z.boolean().default(false),
  })
  .strict();
export type ExposeRequest = z.input<typeof ExposeRequestSchema>;

export const ExposedPortSchema = z.object({
  port: z.number().int(),
  public: z.boolean(),
  /** Where the port is reachable from outside the sandbox (HTTP and WebSocket). */
  url: z.string(),
  /** Send as the header X-CodeCourier-Token; null for public ports. */
  token: z.string().nullable(),
});
export type ApiExposedPort = z.infer<typeof ExposedPortSchema>;

export const EXPOSE_TOKEN_HEADER = "x-codecourier-token";

export const NetworkStateSchema = z.object({
  policy: NetworkPolicySchema,
  tunnels: z.array(TunnelSchema),
  exposed: z.array(ExposedPortSchema),
  /** Packets dropped before reaching the proxy (not TCP, not DNS to our resolver), by kind. */
  dropped: z.object({ udp: z.number(), dns: z.number(), ipv6: z.number(), other: z.number() }),
});
export type ApiNetworkState = z.infer<typeof NetworkStateSchema>;

/** One outbound connection attempt of a sandbox, or one DNS question, or a batch of dropped packets. */
export const NetworkEventSchema = z.discriminatedUnion("type", [
  z.object({
    type: z.literal("network.connection"),
    time: z.number(),
    sandboxId: z.string(),
    allowed: z.boolean(),
    /** How the name was learned: TLS SNI, HTTP Host, an earlier answer of our DNS, a tunnel; null when none. */
    nameSource: z.enum(["sni", "host", "dns", "tunnel"]).nullable(),
    name: z.string().nullable(),
    /** The address and port the guest connected to. */
    requestedAddress: z.string(),
    port: z.number(),
    /** The address the proxy dialed (the one it checked); null when denied before dialing. */
    address: z.string().nullable(),
    /** The policy entry that decided, or a built-in reason such as `default-deny` or `blocked:loopback`. */
    rule: z.string(),
    bytesOut: z.number(),
    bytesIn: z.number(),
    durationMs: z.number(),
    error: z.string().nullable(),
  }),
  z.object({
    type: z.literal("network.dns"),
    time: z.number(),
    sandboxId: z.string(),
    allowed: z.boolean(),
    name: z.string(),
    queryType: z.string(),
    rule: z.string(),
    answers: z.array(z.string()),
  }),
  z.object({
    type: z.literal("network.dropped"),
    time: z.number(),
    sandboxId: z.string(),
    /** udp: UDP other than DNS to our resolver; dns: DNS to another resolver; ipv6; other: neither IPv4 nor ARP. */
    kind: z.enum(["udp", "dns", "ipv6", "other"]),
    packets: z.number(),
  }),
]);
export type NetworkEvent = z.infer<typeof NetworkEventSchema>;
