import { randomBytes } from "node:crypto";
import { posix } from "node:path";
import type { Readable } from "node:stream";
import type { ApiFileStat, ApiUploadState } from "@codecourier/protocol/api";
import { AgentError } from "../agent-client/errors.js";
import { ApiError, notFound } from "../server/api-error.js";
import type { Tenant } from "./control-store.js";
import { resolveInSandbox, type SandboxService } from "./sandbox-service.js";

/** Uploads a tenant may have open at once (started, neither completed nor aborted). */
export const MAX_OPEN_UPLOADS_PER_TENANT = 100;
/** An upload nobody has touched for this long is dropped, with its partial file, when the next one starts. */
export const IDLE_UPLOAD_LIFETIME_MS = 60 * 60_000;

interface Upload {
  readonly uploadId: string;
  readonly tenant: Tenant;
  readonly sandboxId: string;
  /** The destination in the guest. */
  readonly path: string;
  /** Where the bytes gather until completion: a hidden file beside the destination, so the final rename is atomic. */
  readonly partialPath: string;
  readonly mode: number | undefined;
  readonly mtimeMs: number | undefined;
  /** Bytes durably stored in the partial file (fsynced by the agent): the offset of the next chunk. */
  received: number;
  /** A chunk, the completion or the abort is under way: one at a time, so `received` never races. */
  busy: boolean;
  lastUsedAt: number;
}

/**
 * Resumable chunked uploads into sandboxes. The state is in memory, keyed by tenant, sandbox and upload id, so
 * another tenant's or another sandbox's upload id is "not found"; the bytes are in the guest. A server restart
 * forgets the uploads in progress (their partial files stay in the guest as hidden `.NAME.cc-upload-ID` files).
 */
export class FileUploads {
  readonly #uploads = new Map<string, Upload>();

  constructor(private readonly sandboxes: SandboxService) {}

  async start(tenant: Tenant, sandboxId: string, request: { path: string; mode?: number; mtime?: number }): Promise<ApiUploadState> {
    this.#dropIdleUploads();
    const open = [...this.#uploads.values()].filter((upload) => upload.tenant.id === tenant.id).length;
    if (open >= MAX_OPEN_UPLOADS_PER_TENANT) {
      throw new ApiError("quota_exceeded", `this tenant has ${open} uploads open, its limit; complete or abort some first`);
    }
    const { agent } = await this.sandboxes.runningSandbox(tenant, sandboxId);
    const path = resolveInSandbox(request.path);
    // Refused now rather than after the whole upload: completion could only fail the same way.
    const existing = await agent.stat(path).catch((error: unknown) => {
      if (error instanceof AgentError && error.code === "not_found") return undefined;
      throw error;
    });
    if (existing?.type === "directory") throw new ApiError("bad_request", `${request.path} is a directory`);

    const uploadId = `up_${randomBytes(16).toString("base64url")}`;
    // Split lexically only to name a sibling: the guest resolves both paths, `..` and symlinks included, alike.
    const partialPath = `${posix.dirname(path)}/.${posix.basename(path)}.cc-upload-${uploadId}`;
    await agent.writeFileAt(partialPath, 0, ""); // creates it (and missing parents, as a write does)
    const upload: Upload = {
      uploadId,
      tenant,
      sandboxId,
      path,
      partialPath,
      mode: request.mode,
      mtimeMs: request.mtime,
      received: 0,
      busy: false,
      lastUsedAt: Date.now(),
    };
    this.#uploads.set(uploadKey(tenant, sandboxId, uploadId), upload);
    return stateOf(upload);
  }

  status(tenant: Tenant, sandboxId: string, uploadId: string): ApiUploadState {
    return stateOf(this.#find(tenant, sandboxId, uploadId));
  }

  /**
   * Appends one chunk at `offset`, which must be the upload's `received`: a client that lost track (a retry after
   * a lost answer) learns the right offset from the conflict, or from status(). `length` is the chunk's declared
   * size: a chunk whose sender went away half-way is not counted, and the next one at the same offset replaces it.
   */
  async append(tenant: Tenant, sandboxId: string, uploadId: string, offset: number, length: number, body: Readable): Promise<ApiUploadState> {
    const upload = this.#find(tenant, sandboxId, uploadId);
    const refuse = (error: ApiError): never => {
      body.resume(); // drained, so the client reads the answer instead of a reset
      throw error;
    };
    if (upload.busy) refuse(busyError(upload));
    if (offset !== upload.received) {
      refuse(new ApiError("conflict", `upload ${uploadId} has ${upload.received} bytes: expected offset ${upload.received}, not ${offset}`));
    }
    return this.#exclusive(upload, async () => {
      const { agent } = await this.sandboxes.runningSandbox(tenant, sandboxId);
      const stored = await agent.writeFileAt(upload.partialPath, offset, body).catch((error: unknown) => {
        // The body failed on its own terms (it sent nothing for too long: 408): that is the answer.
        if (body.errored instanceof ApiError) throw body.errored;
        // The client went away mid-chunk: an everyday event for an upload made to be resumed, not a server fault.
        if (body.destroyed && !body.readableEnded) throw new ApiError("bad_request", "the chunk's request ended before its body did");
        throw error;
      });
      if (stored.size !== offset + length) {
        throw new ApiError("bad_request", `the chunk was cut short: ${stored.size - offset} of its ${length} bytes arrived`);
      }
      upload.received = stored.size;
      return stateOf(upload);
    });
  }

  /**
   * Moves the finished file into place (fsync, mode, mtime, atomic rename in the guest). With `expectedSize`, an
   * upload that holds a different number of bytes is refused and stays open. A failed completion stays open too.
   */
  async complete(tenant: Tenant, sandboxId: string, uploadId: string, expectedSize?: number): Promise<ApiFileStat> {
    const upload = this.#find(tenant, sandboxId, uploadId);
    if (upload.busy) throw busyError(upload);
    if (expectedSize !== undefined && expectedSize !== upload.received) {
      throw new ApiError("conflict", `upload ${uploadId} has ${upload.received} bytes, not the ${expectedSize} expected; send the rest first`);
    }
    return this.#exclusive(upload, async () => {
      const { agent } = await this.sandboxes.runningSandbox(tenant, sandboxId);
      const stat = await agent.commitUpload(upload.partialPath, upload.path, { mode: upload.mode, mtimeMs: upload.mtimeMs });
      this.#uploads.delete(uploadKey(tenant, sandboxId, uploadId));
      return stat;
    });
  }

  /** Forgets the upload and removes its partial file. */
  async abort(tenant: Tenant, sandboxId: string, uploadId: string): Promise<void> {
    const upload = this.#find(tenant, sandboxId, uploadId);
    if (upload.busy) throw busyError(upload);
    this.#uploads.delete(uploadKey(tenant, sandboxId, uploadId));
    const { agent } = await this.sandboxes.runningSandbox(tenant, sandboxId);
    await removePartial(agent, upload.partialPath);
  }

  #find(tenant: Tenant, sandboxId: string, uploadId: string): Upload {
    const upload = this.#uploads.get(uploadKey(tenant, sandboxId, uploadId));
    if (upload === undefined) throw notFound(`no upload ${uploadId} in sandbox ${sandboxId}`);
    return upload;
  }

  async #exclusive<T>(upload: Upload, work: () => Promise<T>): Promise<T> {
    upload.busy = true;
    try {
      return await work();
    } finally {
      upload.busy = false;
      upload.lastUsedAt = Date.now();
    }
  }

  #dropIdleUploads(): void {
    const cutoff = Date.now() - IDLE_UPLOAD_LIFETIME_MS;
    for (const [key, upload] of this.#uploads) {
      if (upload.busy || upload.lastUsedAt > cutoff) continue;
      this.#uploads.delete(key);
      void this.#discardPartial(upload);
    }
  }

  /** Best effort, and only in a sandbox that is running: cleaning up is no reason to resume a paused one. */
  async #discardPartial(upload: Upload): Promise<void> {
    try {
      if ((await this.sandboxes.get(upload.tenant, upload.sandboxId)).state !== "running") return;
      const { agent } = await this.sandboxes.runningSandbox(upload.tenant, upload.sandboxId);
      await removePartial(agent, upload.partialPath);
    } catch {
      // The sandbox ended meanwhile, or its agent is unreachable: its partial file went (or will go) with it.
    }
  }
}

async function removePartial(agent: { remove(path: string): Promise<void> }, partialPath: string): Promise<void> {
  await agent.remove(partialPath).catch((error: unknown) => {
    if (!(error instanceof AgentError && error.code === "not_found")) throw error;
  });
}

function uploadKey(tenant: Tenant, sandboxId: string, uploadId: string): string {
  return JSON.stringify([tenant.id, sandboxId, uploadId]);
}

function stateOf(upload: Upload): ApiUploadState {
  return { uploadId: upload.uploadId, path: upload.path, received: upload.received };
}

function busyError(upload: Upload): ApiError {
  return new ApiError("conflict", `upload ${upload.uploadId} is busy with another request; ask for its state and retry`);
}
