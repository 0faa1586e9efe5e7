import type { Command } from "commander";
import { Sandbox, type NetworkEvent } from "@codecourier/sdk";
import { connection, withConnectionOptions, type ConnectionFlags } from "../connection.js";
import { parsePositiveInt } from "../parse.js";
import { printJson, printTable } from "../table.js";

const handle = (sandboxId: string, flags: ConnectionFlags) => Sandbox.get(sandboxId, connection(flags));

/**
 * `codecourier net …`: a sandbox's network policy, tunnels, exposed ports and connection events — the same
 * operations as `sandbox.network` in the SDK.
 */
export function registerNetworkCommands(program: Command): void {
  const net = program.command("net").description("A sandbox's network: policy, tunnels, exposed ports, events");

  withConnectionOptions(net.command("show"))
    .description("Show the policy, tunnels, exposed ports and dropped packets")
    .argument("<sandboxId>")
    .option("--json", "print JSON")
    .action(async (sandboxId: string, flags: ConnectionFlags & { json?: boolean }) => {
      const state = await (await handle(sandboxId, flags)).network.state();
      if (flags.json) return printJson(state);
      console.log(`internet: ${state.policy.internet ? "yes (public addresses)" : "no"}`);
      console.log(`allow:    ${state.policy.allow.join(" ") || "(nothing)"}`);
      console.log(`deny:     ${state.policy.deny.join(" ") || "(nothing)"}`);
      for (const t of state.tunnels) console.log(`tunnel:   ${t.name}:${t.port} → ${t.target}`);
      for (const e of state.exposed) console.log(`exposed:  ${e.port} at ${e.url}${e.public ? " (public)" : ""}`);
      const d = state.dropped;
      console.log(`dropped:  udp ${d.udp}, dns to other resolvers ${d.dns}, ipv6 ${d.ipv6}, other ${d.other}`);
    });

  for (const list of ["allow", "deny"] as const) {
    withConnectionOptions(net.command(list))
      .description(list === "allow" ? "Add allow entries (domain, *.domain, CIDR or *, each with optional :port)" : "Add deny entries (they win over allow)")
      .argument("<sandboxId>")
      .argument("<entries...>")
      .option("--remove", `remove the entries from the ${list} list instead`)
      .action(async (sandboxId: string, entries: string[], flags: ConnectionFlags & { remove?: boolean }) => {
        const network = (await handle(sandboxId, flags)).network;
        const policy = flags.remove ? await network.remove(entries, list) : await network[list](...entries);
        printJson(policy);
      });
  }

  withConnectionOptions(net.command("internet"))
    .description("Allow (on) or stop allowing (off) every public address")
    .argument("<sandboxId>")
    .argument("<on|off>")
    .action(async (sandboxId: string, value: string, flags: ConnectionFlags) => {
      if (value !== "on" && value !== "off") throw new Error("internet takes on or off");
      const network = (await handle(sandboxId, flags)).network;
      const current = await network.policy();
      printJson(await network.policy({ ...current, internet: value === "on" }));
    });

  withConnectionOptions(net.command("tunnel"))
    .description("Make exactly HOST:PORT reachable inside the sandbox as NAME:PORT (--remove NAME removes one)")
    .argument("<sandboxId>")
    .argument("<name>")
    .argument("[target]", "host:port on the server's network")
    .option("--remove", "remove the tunnel NAME")
    .action(async (sandboxId: string, name: string, target: string | undefined, flags: ConnectionFlags & { remove?: boolean }) => {
      const network = (await handle(sandboxId, flags)).network;
      if (flags.remove) return network.removeTunnel(name);
      if (!target) throw new Error("tunnel needs a target host:port");
      printJson(await network.tunnel({ name, target }));
    });

  withConnectionOptions(net.command("expose"))
    .description("Expose a guest port at a URL (prints url and token; --public needs no token)")
    .argument("<sandboxId>")
    .argument("<port>", "guest port", parsePositiveInt("port"))
    .option("--public", "no token needed")
    .action(async (sandboxId: string, port: number, flags: ConnectionFlags & { public?: boolean }) => {
      printJson(await (await handle(sandboxId, flags)).network.expose(port, { public: flags.public ?? false }));
    });

  withConnectionOptions(net.command("unexpose"))
    .description("Stop exposing a guest port")
    .argument("<sandboxId>")
    .argument("<port>", "guest port", parsePositiveInt("port"))
    .action(async (sandboxId: string, port: number, flags: ConnectionFlags) => {
      await (await handle(sandboxId, flags)).network.unexpose(port);
    });

  withConnectionOptions(net.command("events"))
    .description("Connection attempts, DNS questions and dropped packets (-f: keep following)")
    .argument("<sandboxId>")
    .option("-f, --follow", "keep printing new events")
    .option("--json", "one JSON object per line")
    .action(async (sandboxId: string, flags: ConnectionFlags & { follow?: boolean; json?: boolean }) => {
      const network = (await handle(sandboxId, flags)).network;
      const rows: string[][] = [];
      for await (const event of network.events({ follow: flags.follow })) {
        if (flags.json) console.log(JSON.stringify(event));
        else if (flags.follow) console.log(describeEvent(event).join("  "));
        else rows.push(describeEvent(event));
      }
      if (!flags.json && !flags.follow) printTable(["TIME", "KIND", "VERDICT", "DESTINATION", "RULE", "DETAIL"], rows);
    });
}

function describeEvent(event: NetworkEvent): string[] {
  const time = new Date(event.time).toISOString().slice(11, 23);
  if (event.type === "network.connection") {
    const destination = `${event.name ?? event.requestedAddress}:${event.port}`;
    const detail = event.allowed ? `${event.bytesOut}↑ ${event.bytesIn}↓ ${event.durationMs}ms via ${event.address}` : (event.error ?? "");
    return [time, "tcp", event.allowed ? "allowed" : "denied", destination, event.rule, detail];
  }
  if (event.type === "network.dns") return [time, `dns ${event.queryType}`, event.allowed ? "answered" : "nxdomain", event.name, event.rule, event.answers.join(",")];
  return [time, event.kind, "dropped", "", "", `${event.packets} packets`];
}
