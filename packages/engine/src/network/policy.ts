/**
 * The network policy of a sandbox, compiled and applied: pure functions, no I/O.
 *
 * The entry grammar and the meaning of a policy are documented in @codecourier/protocol/network. The proxy asks
 * decide() for every connection and the DNS resolver asks decideName() for every question.
 */
import ipaddr from "ipaddr.js";
import { NETWORK_LIMITS, type NetworkPolicy, type NetworkPolicyChange } from "@codecourier/protocol/network";
import { classifyAddress, isAlwaysBlocked, parseIPv4, type AddressContext } from "./address-class.js";

const ACCEPTED_FORMS =
  "an entry is a domain (api.github.com), *.domain (*.npmjs.org), an IPv4 address (10.0.0.5), " +
  "an IPv4 CIDR (10.0.0.0/8) or *, each with an optional :port or :low-high (github.com:22, *:8000-8999)";

/** Longest piece of an offending entry quoted back in an error: the message should stay readable in a log. */
const MAX_QUOTED_LENGTH = 80;

export class PolicyError extends Error {
  readonly code = "invalid_policy";
  override readonly name = "PolicyError";

  constructor(
    message: string,
    /** The offending entry as given, when one entry is at fault. */
    readonly entry?: string,
  ) {
    super(message);
  }
}

type ListName = "allow" | "deny";

interface PortRange {
  low: number;
  high: number;
}

type Target =
  | { kind: "any" }
  | { kind: "exact-name"; name: string }
  | { kind: "subdomains"; parent: string }
  | { kind: "addresses"; network: ipaddr.IPv4; prefix: number };

interface Rule {
  /** The entry in its normalised spelling: what decisions report and what lists store. */
  entry: string;
  target: Target;
  /** null: every port. */
  ports: PortRange | null;
}

interface Rules {
  internet: boolean;
  allow: readonly Rule[];
  deny: readonly Rule[];
}

export interface CompiledPolicy {
  /** The policy with every entry normalised and duplicates dropped. */
  readonly policy: NetworkPolicy;
}

/** The parsed rules of each compiled policy, kept out of the object so callers cannot edit them. */
const compiledRules = new WeakMap<CompiledPolicy, Rules>();

export interface Destination {
  /** The name the connection is for (TLS SNI, HTTP Host, or one our DNS answered), normalised; null if none. */
  name: string | null;
  /** The IPv4 address that will be dialed. */
  address: string;
  /**
   * The port to be dialed, or "any" when the question is whether some port of the destination may be reached (the
   * DNS stub asks so before it hands out an address): then only deny entries for every port count.
   */
  port: number | "any";
  /** True when the address came from the operator's own name map rather than public DNS: then a name rule may reach a private address. */
  operatorMapped?: boolean;
}

export interface Decision {
  allowed: boolean;
  /** The entry that decided, as written (normalised), or a built-in reason. */
  rule: string;
}

// ---------------------------------------------------------------------------------------------------------------
// Names

const LABEL = /^[a-z0-9_-]{1,63}$/;
const MAX_NAME_LENGTH = 253;
/** A last label like this makes resolvers and URL parsers read the whole name as an IPv4 address (`127.1`, `0x7f.1`). */
const NUMERIC_LABEL = /^(\d+|0x[0-9a-f]*)$/;

/** Lower case, one trailing dot dropped; null when it is not a hostname, or is an IP literal. */
export function normalizeName(name: string): string | null {
  const lower = name.toLowerCase();
  const bare = lower.endsWith(".") ? lower.slice(0, -1) : lower;
  if (bare.length === 0 || bare.length > MAX_NAME_LENGTH) return null;
  const labels = bare.split(".");
  if (!labels.every((label) => LABEL.test(label))) return null;
  if (NUMERIC_LABEL.test(labels[labels.length - 1]!)) return null;
  return bare;
}

// ---------------------------------------------------------------------------------------------------------------
// Parsing entries

function quote(text: string): string {
  return JSON.stringify(text.length > MAX_QUOTED_LENGTH ? `${text.slice(0, MAX_QUOTED_LENGTH)}…` : text);
}

function invalidEntry(list: ListName, entry: string, reason: string): PolicyError {
  return new PolicyError(`invalid ${list} entry ${quote(entry)}: ${reason}; ${ACCEPTED_FORMS}`, entry);
}

const PORT_SPEC = /^(\d{1,5})(?:-(\d{1,5}))?$/;

/** Parses `443` or `8000-8999`; null when it is neither. */
function parsePorts(text: string): PortRange | null {
  const match = PORT_SPEC.exec(text);
  if (match === null) return null;
  const low = Number(match[1]);
  const high = match[2] === undefined ? low : Number(match[2]);
  if (low < 1 || high > 65535 || low > high) return null;
  return { low, high };
}

function parseCidr(text: string): Target | null {
  const [addressText, prefixText, extra] = text.split("/");
  if (addressText === undefined || prefixText === undefined || extra !== undefined) return null;
  if (!ipaddr.IPv4.isValidFourPartDecimal(addressText) || !/^\d{1,2}$/.test(prefixText)) return null;
  const prefix = Number(prefixText);
  if (prefix > 32) return null;
  // 10.0.0.5/8 means 10.0.0.0/8; storing the network makes equal rules equal strings.
  const network = ipaddr.IPv4.networkAddressFromCIDR(`${addressText}/${prefix}`);
  return { kind: "addresses", network, prefix };
}

/** Parses what comes before the port; a string saying what is wrong when it is not a valid target. */
function parseTarget(host: string): Target | string {
  if (host === "*") return { kind: "any" };
  if (host.startsWith("*.")) {
    const parent = normalizeName(host.slice(2));
    return parent === null ? "what follows *. is not a domain" : { kind: "subdomains", parent };
  }
  if (host.includes("/")) return parseCidr(host) ?? "not an IPv4 CIDR (address/0-32)";
  if (ipaddr.IPv4.isValidFourPartDecimal(host)) return { kind: "addresses", network: ipaddr.IPv4.parse(host), prefix: 32 };
  // ipaddr.js and the C resolver read 127.1 or 0x7f.0.0.1 as addresses; an entry that reads two ways is a trap.
  if (ipaddr.IPv4.isValid(host)) return "write an IPv4 address as four decimal numbers without leading zeros";
  const name = normalizeName(host);
  return name === null ? "not a domain (labels of a-z 0-9 - _, at most 63 characters each, 253 in all)" : { kind: "exact-name", name };
}

function formatTarget(target: Target): string {
  switch (target.kind) {
    case "any":
      return "*";
    case "exact-name":
      return target.name;
    case "subdomains":
      return `*.${target.parent}`;
    case "addresses":
      return target.prefix === 32 ? target.network.toString() : `${target.network.toString()}/${target.prefix}`;
  }
}

function formatPorts(ports: PortRange | null): string {
  if (ports === null) return "";
  return ports.low === ports.high ? `:${ports.low}` : `:${ports.low}-${ports.high}`;
}

/** IPv6 is the only way an entry gets a second colon or a bracket, so it earns its own message. */
function looksLikeIPv6(entry: string): boolean {
  return entry.startsWith("[") || entry.indexOf(":") !== entry.lastIndexOf(":");
}

function parseEntry(list: ListName, given: string): Rule {
  const entry = given.trim().toLowerCase();
  if (entry.length === 0) throw invalidEntry(list, given, "it is empty");
  if (entry.length > NETWORK_LIMITS.maxEntryLength) {
    throw invalidEntry(list, given, `it is longer than ${NETWORK_LIMITS.maxEntryLength} characters`);
  }
  if (looksLikeIPv6(entry)) throw invalidEntry(list, given, "IPv6 is not accepted (sandboxes have no IPv6)");

  const colon = entry.indexOf(":");
  const host = colon === -1 ? entry : entry.slice(0, colon);
  const ports = colon === -1 ? null : parsePorts(entry.slice(colon + 1));
  if (colon !== -1 && ports === null) {
    throw invalidEntry(list, given, "a port is 1-65535 and a range is low-high with low <= high");
  }
  const target = parseTarget(host);
  if (typeof target === "string") throw invalidEntry(list, given, target);
  return { entry: formatTarget(target) + formatPorts(ports), target, ports };
}

/** Keeps the first of rules that normalise to the same entry, so order (and so which rule reports) is kept. */
function dedupeRules(rules: readonly Rule[]): Rule[] {
  const byEntry = new Map<string, Rule>();
  for (const rule of rules) if (!byEntry.has(rule.entry)) byEntry.set(rule.entry, rule);
  return [...byEntry.values()];
}

function compileList(list: ListName, entries: readonly string[]): Rule[] {
  const rules = dedupeRules(entries.map((entry) => parseEntry(list, entry)));
  if (rules.length > NETWORK_LIMITS.maxPolicyEntries) {
    throw new PolicyError(`too many ${list} entries: ${rules.length}, at most ${NETWORK_LIMITS.maxPolicyEntries}`);
  }
  return rules;
}

/** Validates and normalises every entry; throws PolicyError naming the first bad one. */
export function compilePolicy(policy: NetworkPolicy): CompiledPolicy {
  const allow = compileList("allow", policy.allow);
  const deny = compileList("deny", policy.deny);
  const allowEntries = allow.map((rule) => rule.entry);
  const denyEntries = deny.map((rule) => rule.entry);
  // Frozen so the text a caller shows can never drift from the rules decide() uses.
  Object.freeze(allowEntries);
  Object.freeze(denyEntries);
  const compiled: CompiledPolicy = Object.freeze({
    policy: Object.freeze({ internet: policy.internet, allow: allowEntries, deny: denyEntries }),
  });
  compiledRules.set(compiled, { internet: policy.internet, allow, deny });
  return compiled;
}

function rulesOf(policy: CompiledPolicy): Rules {
  const rules = compiledRules.get(policy);
  if (rules === undefined) throw new TypeError("not a compiled policy: get one from compilePolicy()");
  return rules;
}

// ---------------------------------------------------------------------------------------------------------------
// Changing a policy

function normalisedEntries(list: ListName, entries: readonly string[] | undefined): string[] {
  return (entries ?? []).map((entry) => parseEntry(list, entry).entry);
}

function changeList(list: ListName, current: readonly string[], added: readonly string[], removed: readonly string[]): string[] {
  const removedSet = new Set(removed);
  // Either order of applying both would surprise someone, so the caller has to pick.
  const conflict = added.find((entry) => removedSet.has(entry));
  if (conflict !== undefined) {
    throw new PolicyError(`${list} entry ${quote(conflict)} is both added and removed in one change`, conflict);
  }
  // Removing an entry that is not there is not an error: a retried change must not fail.
  return [...new Set([...current.filter((entry) => !removedSet.has(entry)), ...added])];
}

/** Adds and removes entries (normalised, deduplicated, order kept) and sets internet if given; throws PolicyError. */
export function applyPolicyChange(current: NetworkPolicy, change: NetworkPolicyChange): NetworkPolicy {
  const base = compilePolicy(current).policy;
  const allow = changeList("allow", base.allow, normalisedEntries("allow", change.allow), normalisedEntries("allow", change.removeAllow));
  const deny = changeList("deny", base.deny, normalisedEntries("deny", change.deny), normalisedEntries("deny", change.removeDeny));
  const next = compilePolicy({ internet: change.internet ?? base.internet, allow, deny }).policy;
  return { internet: next.internet, allow: [...next.allow], deny: [...next.deny] };
}

// ---------------------------------------------------------------------------------------------------------------
// Deciding

function portMatches(ports: PortRange | null, port: number | "any"): boolean {
  if (port === "any") return true;
  return ports === null || (ports.low <= port && port <= ports.high);
}

function coversAllPorts(ports: PortRange | null): boolean {
  return ports === null || (ports.low === 1 && ports.high === 65535);
}

function nameMatches(target: Target, name: string | null): boolean {
  if (name === null) return false;
  if (target.kind === "exact-name") return name === target.name;
  if (target.kind === "subdomains") return name.endsWith(`.${target.parent}`);
  return false;
}

function addressMatches(target: Target, address: ipaddr.IPv4): boolean {
  return target.kind === "addresses" && address.match(target.network, target.prefix);
}

interface Subject {
  name: string | null;
  address: ipaddr.IPv4;
  port: number | "any";
  isPublic: boolean;
  /** A name may lead here: the address is public, or the operator mapped the name to it. */
  reachableByName: boolean;
}

function denyMatches(rule: Rule, subject: Subject): boolean {
  // For "any" port a deny entry of some ports leaves the others reachable.
  if (subject.port === "any" ? !coversAllPorts(rule.ports) : !portMatches(rule.ports, subject.port)) return false;
  return rule.target.kind === "any" || nameMatches(rule.target, subject.name) || addressMatches(rule.target, subject.address);
}

type AllowVerdict = "allowed" | "name-led-to-private" | "no-match";

function allowVerdict(rule: Rule, subject: Subject): AllowVerdict {
  if (!portMatches(rule.ports, subject.port)) return "no-match";
  // An address or CIDR entry is the one way to a private address: the user named that network.
  if (addressMatches(rule.target, subject.address)) return "allowed";
  if (rule.target.kind === "any") return subject.isPublic ? "allowed" : "no-match";
  if (!nameMatches(rule.target, subject.name)) return "no-match";
  // A public name answering with a private address is DNS rebinding, unless the operator made that mapping.
  return subject.reachableByName ? "allowed" : "name-led-to-private";
}

function denied(rule: string): Decision {
  return { allowed: false, rule };
}

function allowed(rule: string): Decision {
  return { allowed: true, rule };
}

export function decide(policy: CompiledPolicy, destination: Destination, context: AddressContext): Decision {
  const rules = rulesOf(policy);
  const cls = classifyAddress(destination.address, context);
  if (isAlwaysBlocked(cls)) return denied(`blocked:${cls}`);
  const address = parseIPv4(destination.address);
  if (address === null) return denied("blocked:invalid");

  const isPublic = cls === "public";
  const subject: Subject = {
    name: destination.name === null ? null : normalizeName(destination.name),
    address,
    port: destination.port,
    isPublic,
    reachableByName: isPublic || destination.operatorMapped === true,
  };

  const denyRule = rules.deny.find((rule) => denyMatches(rule, subject));
  if (denyRule !== undefined) return denied(denyRule.entry);

  let nameLedToPrivate = false;
  for (const rule of rules.allow) {
    const verdict = allowVerdict(rule, subject);
    if (verdict === "allowed") return allowed(rule.entry);
    if (verdict === "name-led-to-private") nameLedToPrivate = true;
  }
  if (rules.internet && isPublic) return allowed("internet");
  return denied(nameLedToPrivate ? "blocked:private-address" : "default-deny");
}

/** For the DNS resolver: may this name be resolved at all? Only names some allow entry names (or `*`/internet) and no port-less deny entry names. */
export function decideName(policy: CompiledPolicy, name: string): Decision {
  const rules = rulesOf(policy);
  const normalised = normalizeName(name);
  if (normalised === null) return denied("blocked:invalid-name");

  // A deny entry with a port still lets the name resolve: the connection to its other ports may be allowed.
  const denyRule = rules.deny.find(
    (rule) => coversAllPorts(rule.ports) && (rule.target.kind === "any" || nameMatches(rule.target, normalised)),
  );
  if (denyRule !== undefined) return denied(denyRule.entry);

  // Address entries never make a name resolvable: resolving any name on request would leak data to outside DNS.
  const allowRule = rules.allow.find(
    (rule) => rule.target.kind === "any" || nameMatches(rule.target, normalised),
  );
  if (allowRule !== undefined) return allowed(allowRule.entry);
  if (rules.internet) return allowed("internet");
  return denied("default-deny");
}
