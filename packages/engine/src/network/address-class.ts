/**
 * What kind of address a sandbox is about to dial, and whether any policy may let it through.
 *
 * Fail closed: anything we cannot parse, anything ipaddr.js puts in a range we do not know, and every
 * IPv6 address (sandboxes have no IPv6) lands in a class that is always blocked.
 */
import ipaddr from "ipaddr.js";

export type AddressClass =
  | "public"
  | "private"
  | "loopback"
  | "link-local"
  | "metadata"
  | "multicast"
  | "unspecified"
  | "broadcast"
  | "reserved"
  | "host"
  | "sandbox-network"
  | "ipv6"
  | "invalid";

export interface AddressContext {
  /** The host's own addresses (all its interfaces), never reachable from a sandbox. */
  hostAddresses: ReadonlySet<string>;
  /** CIDRs of the platform's own sandbox plumbing, never reachable. */
  internalCidrs: readonly string[];
}

type IPAddress = ipaddr.IPv4 | ipaddr.IPv6;

/** The cloud instance metadata service (AWS, GCP, Azure, OpenStack, Oracle): credentials live there. */
const METADATA_ADDRESS = ipaddr.IPv4.parse("169.254.169.254");
/** RFC 2544 benchmarking: ipaddr.js files it under "reserved", but it is routed inside networks like RFC 1918. */
const BENCHMARKING_RANGE = ipaddr.IPv4.parseCIDR("198.18.0.0/15");

/**
 * Parses an address the way it will be dialed, or null.
 *
 * IPv4 must be four plain decimal numbers: ipaddr.js (like inet_aton) also reads `127.1`, `0x7f.0.0.1` and
 * `017.0.0.1` (octal), and a check that reads a string differently from the dialer is a bypass.
 */
function parseAddress(ip: string): IPAddress | null {
  if (ip.includes(":")) return ipaddr.IPv6.isValid(ip) ? ipaddr.IPv6.parse(ip) : null;
  return ipaddr.IPv4.isValidFourPartDecimal(ip) ? ipaddr.IPv4.parse(ip) : null;
}

/** An IPv4-mapped IPv6 address (::ffff:a.b.c.d) reaches the IPv4 address it carries, so it is judged as that. */
function unmap(address: IPAddress): IPAddress {
  return address instanceof ipaddr.IPv6 && address.isIPv4MappedAddress() ? address.toIPv4Address() : address;
}

/** The IPv4 address a string names (dotted decimal, or IPv4-mapped IPv6), or null. */
export function parseIPv4(ip: string): ipaddr.IPv4 | null {
  const parsed = parseAddress(ip);
  if (parsed === null) return null;
  const address = unmap(parsed);
  return address instanceof ipaddr.IPv4 ? address : null;
}

function sameAddress(a: IPAddress, b: IPAddress): boolean {
  return a.kind() === b.kind() && a.toNormalizedString() === b.toNormalizedString();
}

function isHostAddress(address: IPAddress, hostAddresses: ReadonlySet<string>): boolean {
  for (const hostAddress of hostAddresses) {
    const parsed = parseAddress(hostAddress);
    if (parsed !== null && sameAddress(address, unmap(parsed))) return true;
  }
  return false;
}

function inCidr(address: IPAddress, cidr: [IPAddress, number]): boolean {
  const [network, prefix] = cidr;
  // ipaddr.js throws when asked to match an IPv4 address against an IPv6 range.
  return address.kind() === network.kind() && address.match(network, prefix);
}

function parseInternalCidr(cidr: string): [IPAddress, number] {
  try {
    return ipaddr.parseCIDR(cidr);
  } catch {
    // A typo here would silently open the platform's own plumbing to every sandbox.
    throw new Error(`invalid internal CIDR "${cidr}" in the address context`);
  }
}

function isInternalAddress(address: IPAddress, internalCidrs: readonly string[]): boolean {
  return internalCidrs.some((cidr) => inCidr(address, parseInternalCidr(cidr)));
}

function classifyIPv4(address: ipaddr.IPv4): AddressClass {
  if (sameAddress(address, METADATA_ADDRESS)) return "metadata";
  const range = address.range();
  switch (range) {
    case "unicast":
      return "public";
    case "private":
    case "carrierGradeNat":
      return "private";
    case "reserved":
      return inCidr(address, BENCHMARKING_RANGE) ? "private" : "reserved";
    case "loopback":
      return "loopback";
    case "linkLocal":
      return "link-local";
    case "multicast":
      return "multicast";
    case "unspecified":
      return "unspecified";
    case "broadcast":
      return "broadcast";
    default:
      // as112, amt, and whatever a later ipaddr.js adds: special purpose, so not the open internet.
      return "reserved";
  }
}

export function classifyAddress(ip: string, context: AddressContext): AddressClass {
  const parsed = parseAddress(ip);
  if (parsed === null) return "invalid";
  const address = unmap(parsed);
  // The host and our plumbing may sit in public or private ranges, so they are checked before the ranges.
  if (isHostAddress(address, context.hostAddresses)) return "host";
  if (isInternalAddress(address, context.internalCidrs)) return "sandbox-network";
  return address instanceof ipaddr.IPv4 ? classifyIPv4(address) : "ipv6";
}

/** Classes a sandbox can never reach, whatever its policy says. */
export function isAlwaysBlocked(cls: AddressClass): boolean {
  return cls !== "public" && cls !== "private";
}
