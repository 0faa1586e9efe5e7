export { dataDir, serverPort, ENGINE_VERSION } from "./config.js";
export { restrictUmask, withGuestImageUmask, secureDataDir } from "./state/data-dir-permissions.js";
export { ensureGuestImage, type GuestImage } from "./images/guest-image.js";
export { GUEST_BUSYBOX } from "./images/guest-scripts.js";
export { chooseAccelerator, bootToMarker, qemuVersion, type AcceleratorChoice } from "./vmm/accel.js";
export { Vm, type VmOptions, type VmState } from "./vmm/vm.js";
export { VmError, VmBootTimeoutError, VmCrashedError, VmConfigError } from "./vmm/errors.js";
export type { Accelerator } from "./vmm/machine.js";
export { QmpClient, QmpError } from "./vmm/qmp.js";
export * from "./agent-client/index.js";
export {
  SandboxEngine,
  type SandboxEngineOptions,
  type TemplateDefinition,
  type SnapshotInfo,
  type SandboxInfo,
  type RunningSandbox,
} from "./sandboxes/sandbox-engine.js";
export * from "./sandboxes/errors.js";
export { findEngineQemus } from "./sandboxes/host-qemu-scan.js";
export { snapshotCompat, type SnapshotCompat } from "./snapshots/compat.js";
export { saveDeviceState, saveMigrationStream, loadDeviceState, transferToReceiver, waitForMigration, MigrationError } from "./vmm/migration.js";
export { qemuArgs, QEMU_BINARY, type MachineSpec, type GuestMemory } from "./vmm/machine.js";
export {
  ControlStore,
  controlDatabasePath,
  DEFAULT_TENANT_LIMITS,
  InvalidTenantNameError,
  KeyNotFoundError,
  type Tenant,
  type TenantLimits,
  type ApiKeyInfo,
} from "./control/control-store.js";
export { SandboxService, type SandboxServiceOptions } from "./control/sandbox-service.js";
export { buildApp, type AppContext } from "./server/app.js";
export { isolatedDataDir } from "./testing/isolated-data-dir.js";
export { startLocalServer, freePort, withServerLog, type LocalServer } from "./testing/local-server.js";
export { numberedPieces } from "./testing/numbered-pieces.js";
export { startOriginNetns, type OriginNetns, type OriginEvent } from "./testing/origin-netns.js";
export { engineTag } from "./network/host-network.js";
export { runTool } from "./util/run-tool.js";
