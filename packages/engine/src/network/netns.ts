/**
 * The host side of one sandbox's network: a network namespace holding the tap device its QEMU uses, a veth pair to
 * the host, and an nftables table that lets only TCP (to our proxy) and DNS (to our stub) leave. Everything here is
 * kernel state made with iproute2 and nft; deleting the namespace removes the tap, both veth ends and the table.
 *
 *   guest eth0 10.0.2.15 ─ tap0 10.0.2.2 [netns cc-<tag>-<sandbox>] veth0 <pool address> ─ <host veth> ─ proxy, DNS
 *
 * Every clone has the same inside address and MACs (clones are identical); the namespace makes them unique, and the
 * veth's pool address (claimed host-wide by its /32 route) is what the proxy sees as the connection's source.
 */
import { GUEST_NETWORK } from "../images/guest-scripts.js";
import { ToolError, runTool } from "../util/run-tool.js";

/** The guest's side, the same in every sandbox (configured by stage2 in the image, kept in every snapshot). */
export const GUEST_ADDRESS = GUEST_NETWORK.address;
/** tap0's address in the namespace: the guest's gateway and DNS server. */
export const GUEST_GATEWAY = GUEST_NETWORK.gateway;
export const GUEST_PREFIX_LENGTH = GUEST_NETWORK.prefixLength;
/** Fixed so that a clone's neighbour cache, saved in its snapshot, stays right in every namespace. */
const TAP_MAC = "02:cc:00:00:00:01";
/** The namespace's next hop to the host: link-local, routed on the veth only, never an address of the host. */
export const HOST_HOP = "169.254.1.1";
const HOST_VETH_MAC = "02:cc:ff:00:00:01";
const NS_VETH_MAC = "02:cc:ff:00:00:02";

export const TAP_DEVICE = "tap0";
const NS_VETH = "veth0";

export class NetworkSetupError extends Error {
  constructor(message: string, cause?: unknown) {
    super(message, { cause });
    this.name = "NetworkSetupError";
  }
}

export interface SandboxNetnsSpec {
  /** Namespace name (also under /run/netns). */
  name: string;
  /** Host end of the veth pair (≤ 15 characters). */
  hostInterface: string;
  /** The namespace's address on the veth, unique on the host (its /32 route is the claim). */
  address: string;
}

/** Whether creating `spec` failed because another sandbox (maybe of another engine) holds its address or names. */
export function isConflict(error: unknown): boolean {
  return error instanceof ToolError && /File exists|already exists/i.test(error.stderr);
}

/**
 * Creates the namespace, its devices, routes and rules. On failure everything it made is removed again and the
 * error says which step failed; an address or name that is taken fails with a conflict (see isConflict).
 */
export async function createSandboxNetns(spec: SandboxNetnsSpec): Promise<void> {
  await runTool("ip", ["netns", "add", spec.name]);
  try {
    // The route first: it is the host-wide claim on the address, and fails if another sandbox holds it.
    await runTool("ip", ["-batch", "-"], {
      input: [
        `link add ${spec.hostInterface} address ${HOST_VETH_MAC} type veth peer name ${NS_VETH} netns ${spec.name} address ${NS_VETH_MAC}`,
        `link set ${spec.hostInterface} up`,
        `route add ${spec.address}/32 dev ${spec.hostInterface}`,
        `neigh replace ${spec.address} lladdr ${NS_VETH_MAC} dev ${spec.hostInterface} nud permanent`,
      ].join("\n"),
    });
    // The host end routes to 127.0.0.1 (where the proxy and DNS stub listen) and carries no IPv6.
    await runTool("sh", ["-c", `echo 1 > /proc/sys/net/ipv4/conf/$1/route_localnet && echo 1 > /proc/sys/net/ipv6/conf/$1/disable_ipv6`, "sh", spec.hostInterface]);
    await runTool("nsenter", [`--net=/run/netns/${spec.name}`, "sh", "-c", NAMESPACE_SETUP_SCRIPT], {
      input: namespaceRuleset(),
      env: { ...process.env, CC_ADDRESS: spec.address },
    });
  } catch (error) {
    await destroySandboxNetns(spec).catch(() => {});
    throw new NetworkSetupError(`setting up the network of ${spec.name} failed: ${error instanceof Error ? error.message : String(error)}`, error);
  }
}

/**
 * Inside the namespace: no IPv6 at all, forwarding on (tap0 → veth0), the devices, and the ruleset from stdin.
 * Sysctls are per namespace, so they are written from inside it.
 */
const NAMESPACE_SETUP_SCRIPT = `set -e
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
echo 1 > /proc/sys/net/ipv4/ip_forward
ip -batch - <<EOF
link set lo up
tuntap add dev ${TAP_DEVICE} mode tap
link set ${TAP_DEVICE} address ${TAP_MAC}
addr add ${GUEST_GATEWAY}/${GUEST_PREFIX_LENGTH} dev ${TAP_DEVICE}
link set ${TAP_DEVICE} up
addr add $CC_ADDRESS/32 dev ${NS_VETH}
link set ${NS_VETH} up
route add ${HOST_HOP} dev ${NS_VETH} scope link
route add default via ${HOST_HOP} dev ${NS_VETH}
neigh replace ${HOST_HOP} lladdr ${HOST_VETH_MAC} dev ${NS_VETH} nud permanent
EOF
exec nft -f -
`;

/**
 * The namespace's rules. Only TCP from the guest is forwarded (the host redirects all of it to the proxy), and UDP to
 * the gateway's port 53 (rewritten to the host hop, where the DNS stub answers). Everything else is dropped and
 * counted by kind, so the drops can be reported. Exposed guest ports are let in from the host side only.
 */
function namespaceRuleset(): string {
  return `table inet codecourier {
  counter dropped_udp {}
  counter dropped_dns {}
  counter dropped_other {}
  set exposed { type inet_service; }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "${TAP_DEVICE}" ip daddr ${GUEST_GATEWAY} udp dport 53 dnat ip to ${HOST_HOP}
    iifname "${NS_VETH}" tcp dport @exposed dnat ip to ${GUEST_ADDRESS}
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "${NS_VETH}" masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "${TAP_DEVICE}" oifname "${NS_VETH}" meta nfproto ipv4 meta l4proto tcp accept
    iifname "${TAP_DEVICE}" oifname "${NS_VETH}" ip daddr ${HOST_HOP} udp dport 53 accept
    iifname "${NS_VETH}" oifname "${TAP_DEVICE}" ip daddr ${GUEST_ADDRESS} tcp dport @exposed accept
    udp dport 53 counter name dropped_dns drop
    meta l4proto udp counter name dropped_udp drop
    counter name dropped_other drop
  }
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname "lo" accept
    meta l4proto udp counter name dropped_udp drop
    counter name dropped_other drop
  }
}
table netdev codecourier_link {
  counter dropped_ipv6 {}
  counter dropped_other {}
  chain ingress {
    type filter hook ingress device "${TAP_DEVICE}" priority 0; policy accept;
    meta protocol ip6 counter name dropped_ipv6 drop
    # 0x8035: the RARP frames QEMU itself sends after every restore (its self-announce); the kernel ignores them.
    meta protocol != { ip, arp, 0x8035 } counter name dropped_other drop
  }
}
`;
}

/** Removes the namespace (and with it the tap, both veth ends and its tables) and the address's host route. */
export async function destroySandboxNetns(spec: SandboxNetnsSpec): Promise<void> {
  // The route goes with the veth; deleting it explicitly as well covers a namespace that vanished without its veth.
  if (spec.hostInterface) await runTool("ip", ["link", "del", spec.hostInterface]).catch(() => {});
  await runTool("ip", ["netns", "del", spec.name]).catch((error: unknown) => {
    if (!(error instanceof ToolError) || !/No such file/i.test(error.stderr)) throw error;
  });
}

/** Names of all network namespaces whose name starts with `prefix`. */
export async function listNetns(prefix: string): Promise<string[]> {
  const out = (await runTool("ip", ["netns", "list"])).toString();
  return out
    .split("\n")
    .map((line) => line.split(" ")[0] ?? "")
    .filter((name) => name.startsWith(prefix));
}

/** The pool address of an existing namespace (for sandboxes a restarted engine adopts). */
export async function netnsAddress(name: string): Promise<string | undefined> {
  const out = (await runTool("ip", ["-n", name, "-j", "-4", "addr", "show", "dev", NS_VETH])).toString();
  const parsed = JSON.parse(out) as Array<{ addr_info?: Array<{ local?: string }> }>;
  return parsed[0]?.addr_info?.[0]?.local;
}

/** Kinds of packets the namespace drops and counts (its counters are named dropped_<kind>). */
export const DROP_KINDS = ["udp", "dns", "ipv6", "other"] as const;
export type DropCounters = Record<(typeof DROP_KINDS)[number], number>;

export function noDrops(): DropCounters {
  return { udp: 0, dns: 0, ipv6: 0, other: 0 };
}

/** Packets the namespace's rules dropped so far, by kind. */
export async function readDropCounters(name: string): Promise<DropCounters> {
  const out = (await runTool("nsenter", [`--net=/run/netns/${name}`, "nft", "-j", "list", "counters"])).toString();
  const parsed = JSON.parse(out) as { nftables: Array<{ counter?: { name: string; table: string; packets: number } }> };
  const counters = noDrops();
  for (const entry of parsed.nftables) {
    const counter = entry.counter;
    const kind = DROP_KINDS.find((k) => counter?.name === `dropped_${k}`);
    if (counter && kind) counters[kind] += counter.packets;
  }
  return counters;
}

/** Sets which guest TCP ports the host may connect to (exposed ports). */
export async function setExposedPorts(name: string, ports: readonly number[]): Promise<void> {
  const elements = ports.length > 0 ? `add element inet codecourier exposed { ${ports.join(", ")} }\n` : "";
  await runTool("nsenter", [`--net=/run/netns/${name}`, "nft", "-f", "-"], { input: `flush set inet codecourier exposed\n${elements}` });
}
