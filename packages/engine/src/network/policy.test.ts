import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { NETWORK_LIMITS, type NetworkPolicy } from "@codecourier/protocol/network";
import type { AddressContext } from "./address-class.js";
import {
  applyPolicyChange,
  compilePolicy,
  decide,
  decideName,
  normalizeName,
  PolicyError,
  type CompiledPolicy,
  type Decision,
  type Destination,
} from "./policy.js";

const context: AddressContext = {
  hostAddresses: new Set(["203.0.113.10", "192.168.0.2"]),
  internalCidrs: ["10.200.0.0/16"],
};

const PUBLIC = "140.82.112.3";
const OTHER_PUBLIC = "151.101.1.1";
const PRIVATE = "10.0.0.5";

function policy(input: Partial<NetworkPolicy>): CompiledPolicy {
  return compilePolicy({ internet: false, allow: [], deny: [], ...input });
}

function dial(compiled: CompiledPolicy, destination: Partial<Destination> & { address: string }): Decision {
  return decide(compiled, { name: null, port: 443, ...destination }, context);
}

function normalisedAllow(entries: string[]): string[] {
  return [...compilePolicy({ internet: false, allow: entries, deny: [] }).policy.allow];
}

function assertRejected(entries: string[], message: RegExp, list: "allow" | "deny" = "allow"): void {
  for (const entry of entries) {
    const input: NetworkPolicy = { internet: false, allow: [], deny: [], [list]: [entry] };
    assert.throws(
      () => compilePolicy(input),
      (error: unknown) => {
        assert.ok(error instanceof PolicyError, `${entry}: expected a PolicyError`);
        assert.equal(error.code, "invalid_policy");
        assert.equal(error.entry, entry);
        assert.match(error.message, message, `${entry}: ${error.message}`);
        return true;
      },
      `expected ${JSON.stringify(entry)} to be rejected`,
    );
  }
}

describe("normalizeName", () => {
  it("lower-cases and drops one trailing dot", () => {
    assert.equal(normalizeName("API.GitHub.com."), "api.github.com");
    assert.equal(normalizeName("_dmarc.example-1.org"), "_dmarc.example-1.org");
    assert.equal(normalizeName("localhost"), "localhost");
  });

  it("rejects empty labels, bad characters and a second trailing dot", () => {
    for (const name of ["", ".", "a..b", ".a.com", "a.com..", "a b.com", "a*.com", "exämple.com", "a/b", "a:443"]) {
      assert.equal(normalizeName(name), null, name);
    }
  });

  it("keeps labels to 63 characters and names to 253", () => {
    assert.equal(normalizeName(`${"a".repeat(63)}.com`), `${"a".repeat(63)}.com`);
    assert.equal(normalizeName(`${"a".repeat(64)}.com`), null);
    const label = "a".repeat(49);
    const longest = [label, label, label, label, label].join(".") + ".abc"; // 5*49 + 4 + 4 = 253
    assert.equal(longest.length, 253);
    assert.equal(normalizeName(longest), longest);
    assert.equal(normalizeName(`a${longest}`), null);
    assert.equal(normalizeName(`${longest}.`), longest);
  });

  it("rejects IP literals, including the spellings inet_aton accepts", () => {
    for (const name of ["1.2.3.4", "127.1", "2130706433", "0x7f.0.0.1", "10.0.0.0x1", "::1", "[::1]"]) {
      assert.equal(normalizeName(name), null, name);
    }
    assert.equal(normalizeName("1.2.3.4.example"), "1.2.3.4.example");
  });
});

describe("compilePolicy", () => {
  it("normalises each entry form", () => {
    assert.deepEqual(
      normalisedAllow([
        "API.GitHub.com.",
        "*.NPMJS.org",
        "10.0.0.5",
        "10.0.0.0/8",
        "*",
        "github.com:22",
        "10.0.0.0/8:5432",
        "*:443",
        "*.example.com:8000-8999",
        " pypi.org ",
      ]),
      [
        "api.github.com",
        "*.npmjs.org",
        "10.0.0.5",
        "10.0.0.0/8",
        "*",
        "github.com:22",
        "10.0.0.0/8:5432",
        "*:443",
        "*.example.com:8000-8999",
        "pypi.org",
      ],
    );
  });

  it("stores a CIDR as its network and a /32 as a plain address", () => {
    assert.deepEqual(normalisedAllow(["10.1.2.3/8", "192.168.7.9/32", "0.0.0.0/0", "1.2.3.4/31"]), [
      "10.0.0.0/8",
      "192.168.7.9",
      "0.0.0.0/0",
      "1.2.3.4/31",
    ]);
  });

  it("writes ports without leading zeros and a one-port range as a port", () => {
    assert.deepEqual(normalisedAllow(["a.com:0443", "b.com:80-80", "c.com:1-65535"]), ["a.com:443", "b.com:80", "c.com:1-65535"]);
  });

  it("drops duplicates after normalising, keeping the first", () => {
    assert.deepEqual(normalisedAllow(["b.com", "a.com", "B.com.", "10.0.0.1/8", "10.0.0.0/8", "a.com:443"]), [
      "b.com",
      "a.com",
      "10.0.0.0/8",
      "a.com:443",
    ]);
  });

  it("keeps internet as given and freezes the normalised policy", () => {
    const compiled = policy({ internet: true, allow: ["A.com"] });
    assert.deepEqual(compiled.policy, { internet: true, allow: ["a.com"], deny: [] });
    assert.throws(() => compiled.policy.allow.push("b.com"), TypeError);
  });

  it("rejects IPv6 entries", () => {
    assertRejected(["::1", "2001:db8::/32", "[2001:db8::1]:443", "::ffff:10.0.0.1", "[::1]"], /IPv6 is not accepted/);
  });

  it("rejects bad ports and ranges", () => {
    assertRejected(["a.com:0", "a.com:65536", "a.com:", "a.com:http", "a.com:10-5", "a.com:-5", "a.com:5-", "a.com:1-2-3", "*:99999"], /a port is 1-65535/);
  });

  it("rejects bad CIDRs", () => {
    assertRejected(["10.0.0.0/33", "10.0.0.0/", "10.0.0.0/8/8", "10.0/8", "10.0.0.0/-1", "10.0.0.0/a", "a.com/8", "/8"], /not an IPv4 CIDR/);
  });

  it("rejects non-standard IPv4 spellings", () => {
    assertRejected(["010.0.0.1", "127.1", "2130706433", "0x7f.0.0.1"], /four decimal numbers/);
  });

  it("rejects names that are not hostnames", () => {
    assertRejected(["a..com", ".a.com", "a.com..", "a b.com", `${"a".repeat(64)}.com`, "ex*mple.com", "**", "*a.com", "1.2.3.4.5", "300.1.1.1"], /not a domain/);
    assertRejected(["*.", "*.*.com", "*..com", "*.1.2.3.4"], /what follows \*\. is not a domain/);
  });

  it("rejects empty and overlong entries", () => {
    assertRejected(["", "   "], /it is empty/);
    assertRejected([`${"a".repeat(NETWORK_LIMITS.maxEntryLength)}.com`], /longer than 300 characters/);
  });

  it("says what is accepted, and which list, in every message", () => {
    assertRejected(["bad..name"], /^invalid deny entry "bad\.\.name": .*an entry is a domain .*\*\.domain.*CIDR.*:port/, "deny");
  });

  it("rejects more entries than the limit, counted after dropping duplicates", () => {
    const entries = Array.from({ length: NETWORK_LIMITS.maxPolicyEntries }, (_, i) => `host${i}.example.com`);
    assert.equal(normalisedAllow([...entries, "HOST0.example.com"]).length, NETWORK_LIMITS.maxPolicyEntries);
    assert.throws(() => policy({ deny: [...entries, "one-more.example.com"] }), (error: unknown) => {
      assert.ok(error instanceof PolicyError);
      assert.match(error.message, /too many deny entries: 257, at most 256/);
      return true;
    });
  });
});

describe("decide: built-in blocks", () => {
  const everything = policy({ internet: true, allow: ["*", "0.0.0.0/0", "*.internal.example"] });

  it("never reaches loopback, link-local, metadata, host, internal or other special addresses, whatever the policy", () => {
    const cases: Array<[string, string]> = [
      ["127.0.0.1", "blocked:loopback"],
      ["169.254.169.254", "blocked:metadata"],
      ["::ffff:169.254.169.254", "blocked:metadata"],
      ["169.254.1.1", "blocked:link-local"],
      ["203.0.113.10", "blocked:host"],
      ["192.168.0.2", "blocked:host"],
      ["10.200.0.7", "blocked:sandbox-network"],
      ["224.0.0.251", "blocked:multicast"],
      ["0.0.0.0", "blocked:unspecified"],
      ["255.255.255.255", "blocked:broadcast"],
      ["192.0.2.1", "blocked:reserved"],
      ["2606:4700::1111", "blocked:ipv6"],
      ["127.1", "blocked:invalid"],
    ];
    for (const [address, rule] of cases) {
      assert.deepEqual(dial(everything, { address }), { allowed: false, rule }, address);
      assert.deepEqual(dial(everything, { address, name: "db.internal.example", operatorMapped: true }), { allowed: false, rule }, address);
    }
  });

  it("lets internet: true reach public addresses only", () => {
    const internet = policy({ internet: true });
    assert.deepEqual(dial(internet, { address: PUBLIC }), { allowed: true, rule: "internet" });
    assert.deepEqual(dial(internet, { address: PRIVATE }), { allowed: false, rule: "default-deny" });
    assert.deepEqual(dial(internet, { address: "100.64.0.1" }), { allowed: false, rule: "default-deny" });
    assert.deepEqual(dial(internet, { address: "127.0.0.1" }), { allowed: false, rule: "blocked:loopback" });
  });

  it("lets * reach public addresses only", () => {
    const star = policy({ allow: ["*"] });
    assert.deepEqual(dial(star, { address: PUBLIC, name: "github.com" }), { allowed: true, rule: "*" });
    assert.deepEqual(dial(star, { address: PRIVATE }), { allowed: false, rule: "default-deny" });
    assert.deepEqual(dial(star, { address: PRIVATE, operatorMapped: true }), { allowed: false, rule: "default-deny" });
  });
});

describe("decide: default deny", () => {
  it("denies everything when the policy is empty", () => {
    const empty = policy({});
    assert.deepEqual(dial(empty, { address: PUBLIC, name: "github.com" }), { allowed: false, rule: "default-deny" });
    assert.deepEqual(dial(empty, { address: PRIVATE }), { allowed: false, rule: "default-deny" });
  });
});

describe("decide: domain entries", () => {
  it("matches an exact name only, case-insensitively and ignoring a trailing dot", () => {
    const compiled = policy({ allow: ["api.github.com"] });
    assert.deepEqual(dial(compiled, { address: PUBLIC, name: "API.GitHub.com." }), { allowed: true, rule: "api.github.com" });
    assert.equal(dial(compiled, { address: PUBLIC, name: "github.com" }).allowed, false);
    assert.equal(dial(compiled, { address: PUBLIC, name: "x.api.github.com" }).allowed, false);
    assert.equal(dial(compiled, { address: PUBLIC, name: "api.github.com.evil.com" }).allowed, false);
    assert.equal(dial(compiled, { address: PUBLIC, name: null }).allowed, false);
  });

  it("matches strict subdomains only with *.domain", () => {
    const compiled = policy({ allow: ["*.npmjs.org"] });
    assert.deepEqual(dial(compiled, { address: PUBLIC, name: "registry.npmjs.org" }), { allowed: true, rule: "*.npmjs.org" });
    assert.equal(dial(compiled, { address: PUBLIC, name: "a.b.npmjs.org" }).allowed, true);
    assert.equal(dial(compiled, { address: PUBLIC, name: "npmjs.org" }).allowed, false);
    assert.equal(dial(compiled, { address: PUBLIC, name: "evilnpmjs.org" }).allowed, false);
    assert.equal(dial(compiled, { address: PUBLIC, name: "npmjs.org.evil.com" }).allowed, false);
  });
});

describe("decide: names leading to private addresses", () => {
  it("blocks a name rule from reaching a private address, saying why", () => {
    const compiled = policy({ allow: ["db.example.com", "*.corp.example.com"] });
    assert.deepEqual(dial(compiled, { address: PRIVATE, name: "db.example.com" }), { allowed: false, rule: "blocked:private-address" });
    assert.deepEqual(dial(compiled, { address: "172.16.3.4", name: "git.corp.example.com" }), { allowed: false, rule: "blocked:private-address" });
    assert.deepEqual(dial(compiled, { address: PRIVATE, name: "other.example.com" }), { allowed: false, rule: "default-deny" });
  });

  it("lets a name rule reach a private address the operator mapped it to", () => {
    const compiled = policy({ allow: ["db.example.com"] });
    assert.deepEqual(dial(compiled, { address: PRIVATE, name: "db.example.com", operatorMapped: true }), { allowed: true, rule: "db.example.com" });
  });

  it("lets an address or CIDR entry reach a private address, whatever the name", () => {
    const compiled = policy({ allow: ["db.example.com", "10.0.0.0/8"] });
    assert.deepEqual(dial(compiled, { address: PRIVATE, name: "db.example.com" }), { allowed: true, rule: "10.0.0.0/8" });
    assert.deepEqual(dial(compiled, { address: "10.9.9.9" }), { allowed: true, rule: "10.0.0.0/8" });
    assert.deepEqual(dial(compiled, { address: "::ffff:10.9.9.9" }), { allowed: true, rule: "10.0.0.0/8" });
    assert.equal(dial(compiled, { address: "11.0.0.1" }).allowed, false);
  });

  it("matches a single-address entry exactly", () => {
    const compiled = policy({ allow: ["10.0.0.5"] });
    assert.deepEqual(dial(compiled, { address: "10.0.0.5" }), { allowed: true, rule: "10.0.0.5" });
    assert.equal(dial(compiled, { address: "10.0.0.6" }).allowed, false);
  });

  it("does not let a CIDR entry open the always-blocked ranges inside it", () => {
    const compiled = policy({ allow: ["0.0.0.0/0", "10.200.0.0/16", "169.254.169.254"] });
    assert.deepEqual(dial(compiled, { address: "10.200.0.1" }), { allowed: false, rule: "blocked:sandbox-network" });
    assert.deepEqual(dial(compiled, { address: "169.254.169.254" }), { allowed: false, rule: "blocked:metadata" });
    assert.deepEqual(dial(compiled, { address: "127.0.0.1" }), { allowed: false, rule: "blocked:loopback" });
    assert.deepEqual(dial(compiled, { address: PUBLIC }), { allowed: true, rule: "0.0.0.0/0" });
  });
});

describe("decide: ports", () => {
  it("matches a single port", () => {
    const compiled = policy({ allow: ["github.com:22"] });
    assert.deepEqual(dial(compiled, { address: PUBLIC, name: "github.com", port: 22 }), { allowed: true, rule: "github.com:22" });
    assert.equal(dial(compiled, { address: PUBLIC, name: "github.com", port: 443 }).allowed, false);
  });

  it("matches a range, ends included", () => {
    const compiled = policy({ allow: ["*.example.com:8000-8999"] });
    for (const [port, expected] of [[7999, false], [8000, true], [8500, true], [8999, true], [9000, false]] as const) {
      assert.equal(dial(compiled, { address: PUBLIC, name: "a.example.com", port }).allowed, expected, String(port));
    }
  });

  it("applies ports to * and CIDR entries", () => {
    const compiled = policy({ allow: ["*:443", "10.0.0.0/8:5432"] });
    assert.deepEqual(dial(compiled, { address: PUBLIC, port: 443 }), { allowed: true, rule: "*:443" });
    assert.equal(dial(compiled, { address: PUBLIC, port: 80 }).allowed, false);
    assert.deepEqual(dial(compiled, { address: PRIVATE, port: 5432 }), { allowed: true, rule: "10.0.0.0/8:5432" });
    assert.equal(dial(compiled, { address: PRIVATE, port: 5433 }).allowed, false);
  });

  it("reports the first allow entry that matches", () => {
    const compiled = policy({ internet: true, allow: ["github.com:443", "github.com", "*"] });
    assert.equal(dial(compiled, { address: PUBLIC, name: "github.com", port: 443 }).rule, "github.com:443");
    assert.equal(dial(compiled, { address: PUBLIC, name: "github.com", port: 22 }).rule, "github.com");
    assert.equal(dial(compiled, { address: PUBLIC, name: "gitlab.com", port: 22 }).rule, "*");
  });
});

describe("decide: deny wins", () => {
  it("over a matching allow entry by name", () => {
    const compiled = policy({ allow: ["*.example.com"], deny: ["secret.example.com"] });
    assert.deepEqual(dial(compiled, { address: PUBLIC, name: "secret.example.com" }), { allowed: false, rule: "secret.example.com" });
    assert.deepEqual(dial(compiled, { address: PUBLIC, name: "public.example.com" }), { allowed: true, rule: "*.example.com" });
  });

  it("over internet: true, by address, CIDR and name", () => {
    const compiled = policy({ internet: true, deny: ["151.101.0.0/16", "140.82.112.3", "*.evil.com"] });
    assert.deepEqual(dial(compiled, { address: OTHER_PUBLIC }), { allowed: false, rule: "151.101.0.0/16" });
    assert.deepEqual(dial(compiled, { address: PUBLIC }), { allowed: false, rule: "140.82.112.3" });
    assert.deepEqual(dial(compiled, { address: "1.1.1.1", name: "x.evil.com" }), { allowed: false, rule: "*.evil.com" });
    assert.deepEqual(dial(compiled, { address: "1.1.1.1", name: "good.com" }), { allowed: true, rule: "internet" });
  });

  it("only on the ports it names", () => {
    const compiled = policy({ internet: true, deny: ["*:25", "*.example.com:8000-8999"] });
    assert.deepEqual(dial(compiled, { address: PUBLIC, port: 25 }), { allowed: false, rule: "*:25" });
    assert.deepEqual(dial(compiled, { address: PUBLIC, name: "a.example.com", port: 8080 }), { allowed: false, rule: "*.example.com:8000-8999" });
    assert.deepEqual(dial(compiled, { address: PUBLIC, name: "a.example.com", port: 443 }), { allowed: true, rule: "internet" });
  });

  it("over an address entry, with deny * closing everything", () => {
    const compiled = policy({ allow: ["10.0.0.0/8", "github.com"], deny: ["*"] });
    assert.deepEqual(dial(compiled, { address: PRIVATE }), { allowed: false, rule: "*" });
    assert.deepEqual(dial(compiled, { address: PUBLIC, name: "github.com" }), { allowed: false, rule: "*" });
  });
});

describe("decide: compiled policies only", () => {
  it("refuses an object that did not come from compilePolicy", () => {
    const forged: CompiledPolicy = { policy: { internet: true, allow: ["*"], deny: [] } };
    assert.throws(() => dial(forged, { address: PUBLIC }), /not a compiled policy/);
  });
});

describe("decideName", () => {
  it("resolves names an allow domain entry names, on any port", () => {
    const compiled = policy({ allow: ["github.com:22", "*.npmjs.org"] });
    assert.deepEqual(decideName(compiled, "GitHub.com."), { allowed: true, rule: "github.com:22" });
    assert.deepEqual(decideName(compiled, "registry.npmjs.org"), { allowed: true, rule: "*.npmjs.org" });
    assert.deepEqual(decideName(compiled, "npmjs.org"), { allowed: false, rule: "default-deny" });
  });

  it("resolves every name under * or internet", () => {
    assert.deepEqual(decideName(policy({ allow: ["*:443"] }), "anything.com"), { allowed: true, rule: "*:443" });
    assert.deepEqual(decideName(policy({ internet: true }), "anything.com"), { allowed: true, rule: "internet" });
  });

  it("never resolves a name because of an address or CIDR entry", () => {
    const compiled = policy({ allow: ["10.0.0.0/8", "0.0.0.0/0", "140.82.112.3"] });
    assert.deepEqual(decideName(compiled, "db.example.com"), { allowed: false, rule: "default-deny" });
  });

  it("refuses names a port-less or all-ports deny entry names", () => {
    const compiled = policy({ internet: true, allow: ["*.example.com"], deny: ["secret.example.com", "*.evil.com:1-65535"] });
    assert.deepEqual(decideName(compiled, "secret.example.com"), { allowed: false, rule: "secret.example.com" });
    assert.deepEqual(decideName(compiled, "a.evil.com"), { allowed: false, rule: "*.evil.com:1-65535" });
    assert.deepEqual(decideName(compiled, "other.example.com"), { allowed: true, rule: "*.example.com" });
  });

  it("still resolves names a deny entry covers on some ports only", () => {
    const compiled = policy({ allow: ["mail.example.com"], deny: ["mail.example.com:25", "*:1-1024"] });
    assert.deepEqual(decideName(compiled, "mail.example.com"), { allowed: true, rule: "mail.example.com" });
  });

  it("refuses every name under a port-less deny *, and ignores address deny entries", () => {
    assert.deepEqual(decideName(policy({ internet: true, deny: ["*"] }), "github.com"), { allowed: false, rule: "*" });
    assert.deepEqual(decideName(policy({ internet: true, deny: ["0.0.0.0/0"] }), "github.com"), { allowed: true, rule: "internet" });
  });

  it("refuses what is not a hostname", () => {
    const compiled = policy({ internet: true });
    for (const name of ["1.2.3.4", "a..b", ""]) {
      assert.deepEqual(decideName(compiled, name), { allowed: false, rule: "blocked:invalid-name" }, name);
    }
  });
});

describe("applyPolicyChange", () => {
  const current: NetworkPolicy = { internet: false, allow: ["github.com", "*.npmjs.org"], deny: ["evil.com"] };

  it("appends new entries normalised, keeping order and dropping duplicates", () => {
    const next = applyPolicyChange(current, { allow: ["PyPI.org.", "GITHUB.COM", "pypi.org", "10.0.0.1/8"], deny: ["*:25"] });
    assert.deepEqual(next, { internet: false, allow: ["github.com", "*.npmjs.org", "pypi.org", "10.0.0.0/8"], deny: ["evil.com", "*:25"] });
  });

  it("removes entries given in any spelling, and ignores ones that are not there", () => {
    const next = applyPolicyChange(current, { removeAllow: ["GitHub.com.", "not-there.com"], removeDeny: ["EVIL.com"] });
    assert.deepEqual(next, { internet: false, allow: ["*.npmjs.org"], deny: [] });
  });

  it("sets internet only when given", () => {
    assert.equal(applyPolicyChange(current, { internet: true }).internet, true);
    assert.equal(applyPolicyChange({ ...current, internet: true }, {}).internet, true);
    assert.equal(applyPolicyChange({ ...current, internet: true }, { internet: false }).internet, false);
  });

  it("does not change the policy it was given", () => {
    const before = structuredClone(current);
    applyPolicyChange(current, { allow: ["a.com"], removeDeny: ["evil.com"], internet: true });
    assert.deepEqual(current, before);
  });

  it("rejects an invalid entry, added or removed, naming it", () => {
    assert.throws(() => applyPolicyChange(current, { allow: ["ok.com", "::1"] }), (error: unknown) => {
      assert.ok(error instanceof PolicyError);
      assert.equal(error.entry, "::1");
      return true;
    });
    assert.throws(() => applyPolicyChange(current, { removeDeny: ["a.com:0"] }), /invalid deny entry "a\.com:0"/);
  });

  it("rejects an entry both added and removed", () => {
    assert.throws(() => applyPolicyChange(current, { allow: ["a.com"], removeAllow: ["A.com."] }), /allow entry "a\.com" is both added and removed/);
  });

  it("respects the entry limit after the change", () => {
    const full = Array.from({ length: NETWORK_LIMITS.maxPolicyEntries }, (_, i) => `host${i}.example.com`);
    const atLimit: NetworkPolicy = { internet: false, allow: full, deny: [] };
    assert.throws(() => applyPolicyChange(atLimit, { allow: ["one-more.com"] }), /too many allow entries/);
    assert.equal(applyPolicyChange(atLimit, { allow: ["host1.example.com"] }).allow.length, NETWORK_LIMITS.maxPolicyEntries);
    assert.equal(applyPolicyChange(atLimit, { allow: ["one-more.com"], removeAllow: ["host0.example.com"] }).allow.at(-1), "one-more.com");
  });

  it("returns a policy the caller may keep editing", () => {
    const next = applyPolicyChange(current, {});
    next.allow.push("x.com");
    assert.deepEqual(next.allow, ["github.com", "*.npmjs.org", "x.com"]);
  });
});
