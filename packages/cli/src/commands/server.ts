import type { Command } from "commander";
import { parsePositiveInt } from "../parse.js";

interface ServerFlags {
  port?: number;
  home?: string;
  region?: string;
  poolSize?: number;
}

/** `codecourier server`: the CodeCourier server in this process (what `npm start` runs, after its set-up). */
export function registerServerCommand(program: Command): void {
  program
    .command("server")
    .summary("Run the CodeCourier server")
    .description(
      "Run the CodeCourier server on this host, on its embedded defaults (SQLite and local disk). Builds the guest " +
        "image on first use. The first start prints an admin API key once (not on a terminal: writes it to " +
        "$CODECOURIER_HOME/admin-key, mode 0600). Flags override CODECOURIER_PORT, " +
        "CODECOURIER_HOME, CODECOURIER_REGION and CODECOURIER_POOL_SIZE.",
    )
    .option("--port <port>", "port on 127.0.0.1 (default 7070)", parsePositiveInt("port"))
    .option("--home <dir>", "data directory (default ~/.codecourier)")
    .option("--region <name>", "the region this host serves (default local)")
    .option("--pool-size <N>", "warm sandboxes kept ready per template shape (default 1)", (value) => Number.parseInt(value, 10))
    .action(async (flags: ServerFlags) => {
      if (flags.port !== undefined) process.env.CODECOURIER_PORT = String(flags.port);
      if (flags.home !== undefined) process.env.CODECOURIER_HOME = flags.home;
      if (flags.region !== undefined) process.env.CODECOURIER_REGION = flags.region;
      if (flags.poolSize !== undefined) process.env.CODECOURIER_POOL_SIZE = String(flags.poolSize);
      // The server module starts on import and runs until SIGINT/SIGTERM.
      await import("@codecourier/engine/server");
    });
}
