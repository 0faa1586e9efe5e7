// Imported first by main.ts, so it runs before any module touches the libuv threadpool (the size is read once,
// when the pool starts). Each blocking read or write on the virtio-serial port parks one pool thread for as long
// as the host is idle, so the default of 4 would leave too few threads for file operations.
process.env.UV_THREADPOOL_SIZE ??= "16";

export {};
