import type { ServerHttp2Stream } from "node:http2";
import type { BackgroundCommandInfo, ExecExit } from "@codecourier/protocol";
import { RequestError, badRequest, sendJson } from "../http/respond.js";
import { endWithExit, respondWithRecords } from "./attachment.js";
import type { Command } from "./exec.js";
import type { CommandRegistry } from "./registry.js";

/**
 * spawnError as listed. The full text stays available through attach; the cap keeps the worst-case list
 * (every running and remembered command with a JSON-escaped error) well under the JSON body limit.
 */
const maxListedSpawnErrorLength = 512;

/**
 * GET /v1/exec/{id}/attach: the command's output from now on, then its exit record; for a command that has
 * already exited, just the exit record.
 */
export function handleAttach(stream: ServerHttp2Stream, id: string, registry: CommandRegistry<Command>): void {
  const running = registry.get(id);
  if (running !== undefined) {
    if (!running.background) {
      throw badRequest(`command ${id} was not started with background: true; only background commands can be attached`);
    }
    respondWithRecords(stream, running.id);
    running.attach(stream);
    return;
  }
  const exited = registry.exited(id);
  if (exited === undefined) throw new RequestError(404, "not_found", `no background command with id ${id.slice(0, 64)}`);
  respondWithRecords(stream, exited.id);
  endWithExit(stream, exited.exit);
}

/** GET /v1/commands: running background commands and the remembered exits, oldest start first. */
export function sendBackgroundCommands(stream: ServerHttp2Stream, registry: CommandRegistry<Command>): void {
  const list: BackgroundCommandInfo[] = [];
  for (const command of registry.values()) {
    if (command.background) list.push({ id: command.id, running: true, startedAtMs: command.startedAtMs });
  }
  for (const { id, startedAtMs, exit } of registry.exitedValues()) {
    list.push({ id, running: false, exit: abbreviated(exit), startedAtMs });
  }
  list.sort((a, b) => a.startedAtMs - b.startedAtMs);
  sendJson(stream, 200, list);
}

function abbreviated(exit: ExecExit): ExecExit {
  const { spawnError } = exit;
  if (spawnError === undefined || spawnError.length <= maxListedSpawnErrorLength) return exit;
  return { ...exit, spawnError: `${spawnError.slice(0, maxListedSpawnErrorLength)}…` };
}
