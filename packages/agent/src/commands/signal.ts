import { constants as osConstants } from "node:os";
import type { ServerHttp2Stream } from "node:http2";
import { RequestError, badRequest, readJsonBody } from "../http/respond.js";
import type { CommandRegistry } from "./registry.js";

/** POST /v1/exec/{id}/signal with {"signal": "SIGTERM"}: signals the command's whole process group. */
export async function handleSignal(stream: ServerHttp2Stream, id: string, registry: CommandRegistry): Promise<void> {
  const body = await readJsonBody(stream);
  const signal = (body as { signal?: unknown } | null)?.signal;
  if (typeof signal !== "string" || !Object.hasOwn(osConstants.signals, signal)) {
    throw badRequest("signal must be a signal name such as SIGTERM");
  }
  const command = registry.get(id);
  if (command === undefined) throw new RequestError(404, "not_found", `no running command with id ${id.slice(0, 64)}`);
  command.signal(signal as NodeJS.Signals);
  if (!stream.destroyed) {
    stream.respond({ ":status": 204 }, { endStream: true });
  }
}
