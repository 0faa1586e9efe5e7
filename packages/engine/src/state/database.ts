import Database from "better-sqlite3";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";

/**
 * The engine's durable record of disk layers, snapshots and sandboxes (SQLite, one file in the data dir).
 * Every change is a single statement or transaction, so a crash at any point leaves a state that recovery can
 * reconcile with the processes and files it finds.
 */

export type SandboxState = "creating" | "pooled" | "running" | "paused" | "stopped" | "lost";
export type SnapshotKind = "template" | "snapshot" | "pause";
export type SnapshotState = "saving" | "ready" | "deleted";

export interface LayerRow {
  id: string;
  /** Parent layer; null when the backing file is the guest image's base disk. */
  parent_id: string | null;
  /** The image base disk at the bottom of the chain. */
  base_path: string;
  frozen: number;
  depth: number;
  created_at: number;
}

export interface SnapshotRow {
  id: string;
  kind: SnapshotKind;
  state: SnapshotState;
  layer_id: string;
  memory_mib: number;
  cpus: number;
  accel: string;
  /** JSON of the SnapshotCompat the snapshot was saved with. */
  compat: string;
  source_sandbox_id: string | null;
  /** For templates: JSON of the template's definition (start command, ready check). */
  definition: string | null;
  created_at: number;
}

export interface SandboxRow {
  id: string;
  state: SandboxState;
  from_snapshot_id: string;
  /** The writable layer (running) or the layer of the pause snapshot (paused). */
  layer_id: string | null;
  paused_snapshot_id: string | null;
  machine_id: string;
  memory_mib: number;
  cpus: number;
  run_dir: string | null;
  pid: number | null;
  created_at: number;
  updated_at: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS layers (
  id TEXT PRIMARY KEY,
  parent_id TEXT,
  base_path TEXT NOT NULL,
  frozen INTEGER NOT NULL DEFAULT 0,
  depth INTEGER NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  state TEXT NOT NULL,
  layer_id TEXT NOT NULL,
  memory_mib INTEGER NOT NULL,
  cpus INTEGER NOT NULL,
  accel TEXT NOT NULL,
  compat TEXT NOT NULL,
  source_sandbox_id TEXT,
  definition TEXT,
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sandboxes (
  id TEXT PRIMARY KEY,
  state TEXT NOT NULL,
  from_snapshot_id TEXT NOT NULL,
  layer_id TEXT,
  paused_snapshot_id TEXT,
  machine_id TEXT NOT NULL,
  memory_mib INTEGER NOT NULL,
  cpus INTEGER NOT NULL,
  run_dir TEXT,
  pid INTEGER,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
`;

const SANDBOX_COLUMNS = new Set(["state", "from_snapshot_id", "layer_id", "paused_snapshot_id", "machine_id", "memory_mib", "cpus", "run_dir", "pid", "updated_at"]);

/** Sandbox states whose sandbox holds resources (a QEMU process, a disk layer, a paused snapshot). */
export const LIVE_SANDBOX_STATES: readonly SandboxState[] = ["creating", "pooled", "running", "paused"];

export class EngineDatabase {
  readonly #db: Database.Database;

  constructor(readonly path: string) {
    mkdirSync(dirname(path), { recursive: true });
    this.#db = new Database(path);
    // WAL: readers never block the writer; NORMAL sync is durable across process crashes (the case that matters
    // here), and far cheaper than FULL on every create.
    this.#db.pragma("journal_mode = WAL");
    this.#db.pragma("synchronous = NORMAL");
    this.#db.exec(SCHEMA);
  }

  close(): void {
    this.#db.close();
  }

  transaction<T>(work: () => T): T {
    return this.#db.transaction(work)();
  }

  // Layers

  insertLayer(row: LayerRow): void {
    this.#db
      .prepare("INSERT INTO layers (id, parent_id, base_path, frozen, depth, created_at) VALUES (@id, @parent_id, @base_path, @frozen, @depth, @created_at)")
      .run(row);
  }

  layer(id: string): LayerRow | undefined {
    return this.#db.prepare("SELECT * FROM layers WHERE id = ?").get(id) as LayerRow | undefined;
  }

  layers(): LayerRow[] {
    return this.#db.prepare("SELECT * FROM layers").all() as LayerRow[];
  }

  freezeLayer(id: string): void {
    this.#db.prepare("UPDATE layers SET frozen = 1 WHERE id = ?").run(id);
  }

  /** After flattening: the layer now sits directly on the image base. */
  reparentLayerOnBase(id: string): void {
    this.#db.prepare("UPDATE layers SET parent_id = NULL, depth = 1 WHERE id = ?").run(id);
  }

  deleteLayer(id: string): void {
    this.#db.prepare("DELETE FROM layers WHERE id = ?").run(id);
  }

  // Snapshots

  insertSnapshot(row: SnapshotRow): void {
    this.#db
      .prepare(
        `INSERT INTO snapshots (id, kind, state, layer_id, memory_mib, cpus, accel, compat, source_sandbox_id, definition, created_at)
         VALUES (@id, @kind, @state, @layer_id, @memory_mib, @cpus, @accel, @compat, @source_sandbox_id, @definition, @created_at)`,
      )
      .run(row);
  }

  snapshot(id: string): SnapshotRow | undefined {
    return this.#db.prepare("SELECT * FROM snapshots WHERE id = ?").get(id) as SnapshotRow | undefined;
  }

  snapshots(states: readonly SnapshotState[] = ["ready"]): SnapshotRow[] {
    const placeholders = states.map(() => "?").join(", ");
    return this.#db.prepare(`SELECT * FROM snapshots WHERE state IN (${placeholders}) ORDER BY created_at`).all(...states) as SnapshotRow[];
  }

  setSnapshotState(id: string, state: SnapshotState): void {
    this.#db.prepare("UPDATE snapshots SET state = ? WHERE id = ?").run(state, id);
  }

  deleteSnapshotRow(id: string): void {
    this.#db.prepare("DELETE FROM snapshots WHERE id = ?").run(id);
  }

  // Sandboxes

  insertSandbox(row: SandboxRow): void {
    this.#db
      .prepare(
        `INSERT INTO sandboxes (id, state, from_snapshot_id, layer_id, paused_snapshot_id, machine_id, memory_mib, cpus, run_dir, pid, created_at, updated_at)
         VALUES (@id, @state, @from_snapshot_id, @layer_id, @paused_snapshot_id, @machine_id, @memory_mib, @cpus, @run_dir, @pid, @created_at, @updated_at)`,
      )
      .run(row);
  }

  sandbox(id: string): SandboxRow | undefined {
    return this.#db.prepare("SELECT * FROM sandboxes WHERE id = ?").get(id) as SandboxRow | undefined;
  }

  sandboxes(states: readonly SandboxState[] = LIVE_SANDBOX_STATES): SandboxRow[] {
    const placeholders = states.map(() => "?").join(", ");
    return this.#db.prepare(`SELECT * FROM sandboxes WHERE state IN (${placeholders}) ORDER BY created_at`).all(...states) as SandboxRow[];
  }

  updateSandbox(id: string, changes: Partial<Omit<SandboxRow, "id" | "created_at">>): void {
    const fields = Object.keys(changes);
    if (fields.length === 0) return;
    // Column names are interpolated into the statement: only known ones, never anything a caller made up.
    for (const field of fields) if (!SANDBOX_COLUMNS.has(field)) throw new Error(`not a sandbox column: ${field}`);
    const assignments = fields.map((field) => `${field} = @${field}`).join(", ");
    this.#db.prepare(`UPDATE sandboxes SET ${assignments}, updated_at = @updated_at WHERE id = @id`).run({ ...changes, id, updated_at: Date.now() });
  }
}
