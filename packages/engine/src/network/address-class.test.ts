import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { classifyAddress, isAlwaysBlocked, parseIPv4, type AddressClass, type AddressContext } from "./address-class.js";

const noContext: AddressContext = { hostAddresses: new Set(), internalCidrs: [] };

function classesOf(addresses: readonly string[], context: AddressContext = noContext): AddressClass[] {
  return addresses.map((address) => classifyAddress(address, context));
}

function assertClass(cls: AddressClass, addresses: readonly string[], context: AddressContext = noContext): void {
  assert.deepEqual(classesOf(addresses, context), addresses.map(() => cls), `expected ${addresses.join(", ")} to be ${cls}`);
}

describe("classifyAddress", () => {
  it("calls ordinary internet addresses public", () => {
    assertClass("public", ["1.1.1.1", "8.8.8.8", "140.82.112.3", "100.63.255.255", "100.128.0.0", "198.17.255.255", "198.20.0.0", "223.255.255.255"]);
  });

  it("calls RFC 1918, carrier-grade NAT and benchmarking ranges private", () => {
    assertClass("private", [
      "10.0.0.1",
      "10.255.255.255",
      "172.16.0.1",
      "172.31.255.255",
      "192.168.1.1",
      "100.64.0.1",
      "100.127.255.255",
      "198.18.0.1",
      "198.19.255.255",
    ]);
  });

  it("leaves the neighbours of 172.16/12 public", () => {
    assertClass("public", ["172.15.255.255", "172.32.0.0"]);
  });

  it("calls 127/8 loopback", () => {
    assertClass("loopback", ["127.0.0.1", "127.255.255.254"]);
  });

  it("calls 169.254.169.254 metadata and the rest of 169.254/16 link-local", () => {
    assertClass("metadata", ["169.254.169.254"]);
    assertClass("link-local", ["169.254.0.1", "169.254.169.253", "169.254.169.255", "169.254.170.2"]);
  });

  it("calls 224/4 multicast, 0/8 unspecified and 255.255.255.255 broadcast", () => {
    assertClass("multicast", ["224.0.0.1", "239.255.255.250"]);
    assertClass("unspecified", ["0.0.0.0", "0.1.2.3"]);
    assertClass("broadcast", ["255.255.255.255"]);
  });

  it("calls documentation, 240/4 and other special-purpose ranges reserved", () => {
    assertClass("reserved", [
      "192.0.2.1", // TEST-NET-1
      "198.51.100.1", // TEST-NET-2
      "203.0.113.1", // TEST-NET-3
      "192.0.0.8", // IETF protocol assignments
      "192.88.99.1", // 6to4 relay
      "240.0.0.1",
      "255.255.255.254",
      "192.175.48.1", // AS112
      "192.52.193.1", // AMT
    ]);
  });

  it("classifies an IPv4-mapped IPv6 address as the IPv4 address it carries", () => {
    assert.deepEqual(classesOf(["::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::ffff:8.8.8.8"]), [
      "loopback",
      "loopback",
      "metadata",
      "private",
      "public",
    ]);
  });

  it("calls every other IPv6 address ipv6", () => {
    assertClass("ipv6", ["::1", "2606:4700::1111", "fe80::1", "fe80::1%eth0", "fd00:ec2::254", "::"]);
  });

  it("calls garbage and non-standard IPv4 spellings invalid", () => {
    // 127.1, 2130706433, 0x7f.0.0.1 and 0177.0.0.1 are all 127.0.0.1 to inet_aton.
    assertClass("invalid", ["", "localhost", "1.2.3", "1.2.3.4.5", "256.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", " 1.2.3.4", "1.2.3.4/32", "::g"]);
  });

  it("recognises the host's own addresses before any range, in any spelling", () => {
    const context: AddressContext = { hostAddresses: new Set(["203.0.113.7", "10.1.2.3", "8.8.4.4", "2001:db8::7"]), internalCidrs: [] };
    assertClass("host", ["203.0.113.7", "10.1.2.3", "8.8.4.4", "::ffff:8.8.4.4", "2001:db8:0::7"], context);
    assertClass("public", ["8.8.4.5"], context);
  });

  it("recognises the host's IPv4-mapped addresses as their IPv4", () => {
    const context: AddressContext = { hostAddresses: new Set(["::ffff:10.1.2.3"]), internalCidrs: [] };
    assertClass("host", ["10.1.2.3"], context);
  });

  it("calls the platform's internal CIDRs sandbox-network, whether they are public or private", () => {
    const context: AddressContext = { hostAddresses: new Set(), internalCidrs: ["10.200.0.0/16", "44.0.0.0/30", "fd00:cc::/64"] };
    assertClass("sandbox-network", ["10.200.0.1", "10.200.255.255", "44.0.0.3", "::ffff:10.200.1.1", "fd00:cc::5"], context);
    assertClass("private", ["10.201.0.1"], context);
    assertClass("public", ["44.0.0.4"], context);
  });

  it("puts the host ahead of the internal CIDRs", () => {
    const context: AddressContext = { hostAddresses: new Set(["10.200.0.1"]), internalCidrs: ["10.200.0.0/16"] };
    assertClass("host", ["10.200.0.1"], context);
  });

  it("refuses to work with an internal CIDR it cannot read rather than ignore it", () => {
    const context: AddressContext = { hostAddresses: new Set(), internalCidrs: ["10.200.0.0/33"] };
    assert.throws(() => classifyAddress("10.200.0.1", context), /invalid internal CIDR "10\.200\.0\.0\/33"/);
  });
});

describe("isAlwaysBlocked", () => {
  it("lets only public and private through", () => {
    const all: AddressClass[] = [
      "public",
      "private",
      "loopback",
      "link-local",
      "metadata",
      "multicast",
      "unspecified",
      "broadcast",
      "reserved",
      "host",
      "sandbox-network",
      "ipv6",
      "invalid",
    ];
    assert.deepEqual(
      all.filter((cls) => !isAlwaysBlocked(cls)),
      ["public", "private"],
    );
  });
});

describe("parseIPv4", () => {
  it("reads dotted decimal and IPv4-mapped IPv6, nothing else", () => {
    assert.equal(parseIPv4("10.0.0.1")?.toString(), "10.0.0.1");
    assert.equal(parseIPv4("::ffff:10.0.0.1")?.toString(), "10.0.0.1");
    assert.equal(parseIPv4("2001:db8::1"), null);
    assert.equal(parseIPv4("10.1"), null);
    assert.equal(parseIPv4("example.com"), null);
  });
});
