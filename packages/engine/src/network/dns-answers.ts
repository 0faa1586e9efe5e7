/**
 * What a sandbox's DNS question gets: a tunnel's own address, or the addresses of a name its policy allows by name
 * (only those the proxy would also let it dial), or NXDOMAIN. Names the policy does not allow are never resolved —
 * asking upstream servers about arbitrary names would let a guest carry data out through DNS. Each question is an
 * event.
 */
import type { AddressContext } from "./address-class.js";
import type { DnsAnswer, DnsQuestion } from "./dns-stub.js";
import type { NameResolver } from "./name-resolver.js";
import { decide, decideName } from "./policy.js";
import type { SandboxNetwork } from "./sandbox-network.js";

const DNS_TTL_SECONDS = 30;

export async function answerQuestion(sandbox: SandboxNetwork, question: DnsQuestion, resolver: NameResolver, context: AddressContext): Promise<DnsAnswer> {
  const record = (allowed: boolean, rule: string, answers: string[] = []) =>
    sandbox.events.record({ type: "network.dns", time: Date.now(), sandboxId: sandbox.sandboxId, allowed, name: question.name, queryType: question.type, rule, answers });
  const tunnel = sandbox.tunnels.get(question.name);
  if (tunnel) {
    record(true, `tunnel:${tunnel.name}`, [tunnel.address]);
    return { kind: "addresses", addresses: question.type === "A" ? [tunnel.address] : [], ttlSeconds: DNS_TTL_SECONDS };
  }
  const byName = decideName(sandbox.policy, question.name);
  if (!byName.allowed) {
    record(false, byName.rule);
    return { kind: "nxdomain" };
  }
  // Sandboxes have no IPv6: an allowed name's other questions get an empty answer, without asking upstream.
  if (question.type !== "A") {
    record(true, byName.rule);
    return { kind: "addresses", addresses: [], ttlSeconds: DNS_TTL_SECONDS };
  }
  let resolved;
  try {
    resolved = await resolver.resolve(question.name);
  } catch {
    record(false, "unresolvable");
    return { kind: "nxdomain" };
  }
  // Only addresses some port of the name could be dialed at: the guest gets no address the proxy would refuse.
  const usable = resolved.addresses.filter(
    (address) => decide(sandbox.policy, { name: question.name, address, port: "any", operatorMapped: resolved.operatorMapped }, context).allowed,
  );
  for (const address of usable) sandbox.rememberAnswer(address, question.name);
  record(usable.length > 0, usable.length > 0 ? byName.rule : "blocked:addresses", usable);
  return usable.length > 0 ? { kind: "addresses", addresses: usable, ttlSeconds: DNS_TTL_SECONDS } : { kind: "nxdomain" };
}
