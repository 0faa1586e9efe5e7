import { chooseAccelerator, engineTag, ensureGuestImage, runTool, startLocalServer, startOriginNetns } from "@codecourier/engine";
import { createSandbox, type Sandbox } from "@codecourier/sdk";
import { benchHost, type SuiteResult } from "../report.js";
import { summarize, type Metric } from "../stats.js";

/** Size of each download in the throughput runs. */
const DOWNLOAD_MB = 64;
const THROUGHPUT_RUNS = 3;
/** The direct link's addresses: the sandbox's namespace end and the origin's end. */
const DIRECT_SANDBOX_SIDE = "10.251.0.1";
const DIRECT_ORIGIN = "10.251.0.2";

/**
 * Connections from a guest to an origin through the egress proxy (policy on: SNI/Host peeked, the name resolved and
 * checked, a new upstream connection dialled) and, in the same run, to the same origin over a direct link from the
 * sandbox's namespace that bypasses the proxy (policy off) — the floor the proxy's cost is a ratio of.
 *
 * The origin is a test server in a namespace of its own (never a real destination). The direct link is plumbing the
 * bench adds to the sandbox's namespace and its rules; nothing of the product offers it.
 */
export async function networkSuite(runs: number, log: (line: string) => void): Promise<SuiteResult> {
  const image = await ensureGuestImage(log);
  const { accel, reason } = await chooseAccelerator(image);
  const notes = [`accelerator ${accel}: ${reason}`];
  const origins = await startOriginNetns(1);
  const originIp = origins.addresses[0]!;
  const server = await startLocalServer({ prefix: "ccbench-net-", env: { CODECOURIER_NETWORK_HOSTS: `origin.test=${originIp}` } });
  let sandbox: Sandbox | undefined;
  try {
    const connection = { url: server.url, apiKey: await server.createKey("bench") };
    sandbox = await createSandbox({ ...connection, network: { allow: ["origin.test"] } });
    await addDirectLink(`cc-${engineTag(server.home)}-${sandbox.sandboxId}`, origins.name);
    log(`sandbox ${sandbox.sandboxId}: proxied origin.test (${originIp}), direct ${DIRECT_ORIGIN}`);

    const metrics: Record<string, Metric> = {};
    for (const scheme of ["http", "https"] as const) {
      // Alternating, so both paths see the same guest and host conditions; pairs give the per-connection overhead.
      // Name lookup (our DNS stub, for origin.test only) is taken out: it is reported on its own.
      const times = await guestLines(
        sandbox,
        `for i in $(seq ${runs}); do ` +
          `curl -sk -o /dev/null -w '%{time_namelookup} %{time_starttransfer} ' ${scheme}://origin.test/; ` +
          `curl -sk -o /dev/null -w '%{time_namelookup} %{time_starttransfer}\\n' ${scheme}://${DIRECT_ORIGIN}/; done`,
        4,
      );
      const proxied = times.map(([lookup, firstByte]) => (firstByte! - lookup!) * 1000);
      const direct = times.map(([, , lookup, firstByte]) => (firstByte! - lookup!) * 1000);
      if (scheme === "http") metrics.guestDnsLookupMs = summarize(times.map(([lookup]) => lookup! * 1000));
      metrics[`${scheme}FirstByteWithProxyMs`] = summarize(proxied);
      metrics[`${scheme}FirstByteWithoutProxyMs`] = summarize(direct);
      metrics[`${scheme}ProxyConnectOverheadMs`] = summarize(proxied.map((p, i) => p - direct[i]!));
      log(`${scheme}: with proxy p50 ${metrics[`${scheme}FirstByteWithProxyMs`]!.p50} ms, without ${metrics[`${scheme}FirstByteWithoutProxyMs`]!.p50} ms`);
    }
    metrics.proxyConnectOverheadMs = metrics.httpProxyConnectOverheadMs!;

    const speeds = await guestLines(
      sandbox,
      `for i in $(seq ${THROUGHPUT_RUNS}); do ` +
        `curl -s -o /dev/null -w '%{speed_download} ' http://origin.test/bytes/${DOWNLOAD_MB * 1_000_000}; ` +
        `curl -s -o /dev/null -w '%{speed_download}\\n' http://${DIRECT_ORIGIN}/bytes/${DOWNLOAD_MB * 1_000_000}; done`,
      2,
    );
    metrics.proxyThroughputMBps = summarize(speeds.map(([p]) => p! / 1e6), "MB/s");
    metrics.directThroughputMBps = summarize(speeds.map(([, d]) => d! / 1e6), "MB/s");
    log(`throughput: with proxy ${metrics.proxyThroughputMBps.p50} MB/s, without ${metrics.directThroughputMBps.p50} MB/s`);

    notes.push(
      "FirstByte: curl's time_starttransfer minus time_namelookup for GET / of a tiny page, measured in the guest, " +
        "alternating proxied and direct connections; ProxyConnectOverheadMs: the per-pair difference (proxied minus direct); " +
        "guestDnsLookupMs: curl's time_namelookup for origin.test (the guest asks our DNS stub every time)",
      "with proxy: guest → tap → sandbox namespace → veth → host → egress proxy (peek SNI/Host, policy, resolve via the " +
        "operator's name map, dial) → origin namespace; without: guest → tap → sandbox namespace → a direct veth to the " +
        "origin namespace that the bench adds (no proxy, no policy)",
      `throughput: ${DOWNLOAD_MB} MB downloads by curl in the guest, ${THROUGHPUT_RUNS} each way`,
    );
    const ratios = {
      httpFirstByteWithVsWithoutProxy: metrics.httpFirstByteWithProxyMs!.p50 / metrics.httpFirstByteWithoutProxyMs!.p50,
      httpsFirstByteWithVsWithoutProxy: metrics.httpsFirstByteWithProxyMs!.p50 / metrics.httpsFirstByteWithoutProxyMs!.p50,
      proxyThroughputVsDirect: metrics.proxyThroughputMBps.p50 / metrics.directThroughputMBps.p50,
    };
    return { suite: "network", accel, runs, host: await benchHost(), metrics, ratios, notes };
  } finally {
    await sandbox?.kill().catch(() => {});
    await server.stop();
    await origins.stop();
  }
}

/** Runs a command in the guest and parses each output line as numbers. */
async function guestLines(sandbox: Sandbox, command: string, perLine: number): Promise<number[][]> {
  const result = await sandbox.runCommand(["bash", "-c", command], { check: true, timeoutMs: 600_000 });
  const lines = result.stdout.trim().split("\n").map((line) => line.trim().split(/\s+/).map(Number));
  if (lines.some((numbers) => numbers.length !== perLine || numbers.some((n) => !Number.isFinite(n) || n < 0))) {
    throw new Error(`unexpected measurements from the guest:\n${result.stdout}${result.stderr}`);
  }
  return lines;
}

/** A veth from the sandbox's namespace straight to the origin's, with the rules to forward the guest over it. */
async function addDirectLink(sandboxNetns: string, originNetns: string): Promise<void> {
  await runTool("ip", ["link", "add", "ccbench0", "netns", sandboxNetns, "type", "veth", "peer", "name", "ccbench1", "netns", originNetns]);
  await runTool("ip", ["-n", sandboxNetns, "-batch", "-"], { input: `addr add ${DIRECT_SANDBOX_SIDE}/30 dev ccbench0\nlink set ccbench0 up\n` });
  await runTool("ip", ["-n", originNetns, "-batch", "-"], { input: `addr add ${DIRECT_ORIGIN}/30 dev ccbench1\nlink set ccbench1 up\n` });
  await runTool("nsenter", [`--net=/run/netns/${sandboxNetns}`, "nft", "-f", "-"], {
    input: `insert rule inet codecourier forward iifname "tap0" oifname "ccbench0" accept\nadd rule inet codecourier postrouting oifname "ccbench0" masquerade\n`,
  });
}
