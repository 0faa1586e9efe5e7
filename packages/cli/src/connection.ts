import type { Command } from "commander";
import type { ConnectionOptions } from "@codecourier/sdk";
import { fail } from "./progress.js";

/** The options every server command takes; unset, the SDK reads CODECOURIER_URL and CODECOURIER_API_KEY. */
export interface ConnectionFlags {
  url?: string;
  apiKey?: string;
}

export function withConnectionOptions(command: Command): Command {
  return command
    .option("--url <url>", "the server's URL (default: $CODECOURIER_URL or http://127.0.0.1:7070)")
    .option("--api-key <key>", "the API key (default: $CODECOURIER_API_KEY; prefer the variable, a flag shows in ps)");
}

/** The SDK's connection options; without any API key a usage error that names the flag (the SDK's names its option). */
export function connection(flags: ConnectionFlags): ConnectionOptions {
  if (!flags.apiKey && !process.env.CODECOURIER_API_KEY) {
    fail("no API key: pass --api-key or set CODECOURIER_API_KEY (create one on the server's host with `codecourier keys create --tenant NAME`)", 2);
  }
  return { url: flags.url, apiKey: flags.apiKey };
}
