export { dataDir, serverPort, ENGINE_VERSION } from "./config.js";
export { ensureGuestImage, type GuestImage } from "./images/guest-image.js";
export { chooseAccelerator, bootToMarker, qemuVersion, type AcceleratorChoice } from "./vmm/accel.js";
export { Vm, type VmOptions, type VmState } from "./vmm/vm.js";
export { VmError, VmBootTimeoutError, VmCrashedError, VmConfigError } from "./vmm/errors.js";
export type { Accelerator } from "./vmm/machine.js";
export { QmpClient, QmpError } from "./vmm/qmp.js";
export * from "./agent-client/index.js";
