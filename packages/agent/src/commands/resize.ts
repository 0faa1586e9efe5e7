import type { ServerHttp2Stream } from "node:http2";
import { RequestError, readJsonBody } from "../http/respond.js";
import type { Command } from "./exec.js";
import type { CommandRegistry } from "./registry.js";
import { validateTerminalSize } from "./spec.js";

/** Generous for `{"rows":…,"cols":…}`; a resize body is never parsed past this. */
const maxResizeBodyBytes = 1024;

/** POST /v1/exec/{id}/resize with {"rows": 40, "cols": 120}: resizes the terminal of a command started with a pty. */
export async function handleResize(stream: ServerHttp2Stream, id: string, registry: CommandRegistry<Command>): Promise<void> {
  const size = validateTerminalSize(await readJsonBody(stream, maxResizeBodyBytes), "resize body");
  const command = registry.get(id);
  if (command === undefined) throw new RequestError(404, "not_found", `no running command with id ${id.slice(0, 64)}`);
  await command.resize(size);
  if (!stream.destroyed) stream.respond({ ":status": 204 }, { endStream: true });
}
