/*
 * guest-identity: gives a guest restored from a memory snapshot a clock and randomness of its own.
 *
 * Every clone of a snapshot resumes with the clock of the moment it was saved and the same kernel CRNG state, so
 * two clones read identical bytes from /dev/urandom. The agent (Node) can do neither of the syscalls needed, so
 * it runs this helper:
 *
 *     guest-identity <epoch-ms>   < entropy   (32..512 bytes from the host's CSPRNG)
 *     guest-identity --serve      (requests on stdin, one per line: "<epoch-ms> <entropy as hex>";
 *                                  one answer line each: "ok" or "error <message>")
 *
 * The agent keeps one --serve process for its whole life (it is part of every snapshot), so a restored clone's
 * identity refresh costs a pipe round trip instead of a process start.
 * It sets CLOCK_REALTIME, mixes the entropy into the kernel's input pool (RNDADDENTROPY, crediting it: it comes
 * from the host's CSPRNG) and then forces the CRNG to reseed from that pool at once (RNDRESEEDCRNG). Without the
 * reseed the per-CPU CRNGs keep producing the clones' shared stream until their next scheduled reseed, up to a
 * minute later. Needs root (CAP_SYS_TIME, CAP_SYS_ADMIN).
 *
 * Everything is validated before the first change. Exits 0 on success; otherwise prints one line to stderr and
 * exits 2 (usage) or 1 (a syscall failed).
 *
 * Built static (gcc -static -Os -s) onto the system disk, so it runs in any root filesystem.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define MIN_ENTROPY_BYTES 32
#define MAX_ENTROPY_BYTES 512

static int usage(const char *problem) {
  fprintf(stderr, "guest-identity: %s\nusage: guest-identity <epoch-ms> < entropy (%d..%d bytes)\n", problem,
          MIN_ENTROPY_BYTES, MAX_ENTROPY_BYTES);
  return 2;
}

static int failed(const char *what) {
  fprintf(stderr, "guest-identity: %s: %s\n", what, strerror(errno));
  return 1;
}

/* Parses a non-negative decimal number of milliseconds; no sign, no spaces, no trailing characters. */
static int parse_epoch_ms(const char *text, long long *out) {
  if (*text < '0' || *text > '9') return -1;
  errno = 0;
  char *end = NULL;
  long long value = strtoll(text, &end, 10);
  if (errno != 0 || *end != '\0') return -1;
  *out = value;
  return 0;
}

/* Reads all of stdin, at most `capacity` bytes; returns the count, or -1 if there is more or reading failed. */
static ssize_t read_all(int fd, unsigned char *buffer, size_t capacity) {
  size_t filled = 0;
  for (;;) {
    unsigned char probe;
    /* Read one byte past the capacity to tell "exactly full" from "too much". */
    unsigned char *target = filled < capacity ? buffer + filled : &probe;
    size_t room = filled < capacity ? capacity - filled : 1;
    ssize_t n = read(fd, target, room);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (n == 0) return (ssize_t)filled;
    if (filled >= capacity) {
      errno = EFBIG;
      return -1;
    }
    filled += (size_t)n;
  }
}

/* Decodes lowercase or uppercase hex into `out`; returns the byte count, or -1 on odd length or a bad digit. */
static ssize_t decode_hex(const char *text, size_t length, unsigned char *out, size_t capacity) {
  if (length % 2 != 0 || length / 2 > capacity) return -1;
  for (size_t i = 0; i < length; i += 2) {
    int value = 0;
    for (size_t j = 0; j < 2; j++) {
      char c = text[i + j];
      int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (digit < 0) return -1;
      value = value * 16 + digit;
    }
    out[i / 2] = (unsigned char)value;
  }
  return (ssize_t)(length / 2);
}

/* Sets the clock, then credits the entropy and forces a CRNG reseed. Returns NULL or the failing step. */
static const char *apply(int random_fd, long long epoch_ms, struct rand_pool_info *pool, ssize_t entropy_bytes) {
  pool->buf_size = (int)entropy_bytes;
  pool->entropy_count = (int)entropy_bytes * 8;
  struct timespec now = { .tv_sec = (time_t)(epoch_ms / 1000), .tv_nsec = (long)(epoch_ms % 1000) * 1000000L };
  if (clock_settime(CLOCK_REALTIME, &now) != 0) return "clock_settime(CLOCK_REALTIME)";
  if (ioctl(random_fd, RNDADDENTROPY, pool) != 0) return "ioctl(RNDADDENTROPY)";
  if (ioctl(random_fd, RNDRESEEDCRNG) != 0) return "ioctl(RNDRESEEDCRNG)";
  explicit_bzero(pool->buf, MAX_ENTROPY_BYTES);
  return NULL;
}

/* One request per line, one answer per line; a malformed request is answered with an error and changes nothing. */
static int serve(void) {
  struct rand_pool_info *pool = malloc(sizeof(struct rand_pool_info) + MAX_ENTROPY_BYTES);
  if (pool == NULL) return failed("malloc");
  int random_fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (random_fd < 0) return failed("opening /dev/urandom");
  /* Room for the epoch, a space, the hex entropy and the newline. */
  char line[32 + 2 * MAX_ENTROPY_BYTES + 2];
  setvbuf(stdout, NULL, _IOLBF, 0);
  while (fgets(line, sizeof line, stdin) != NULL) {
    size_t length = strlen(line);
    if (length == 0 || line[length - 1] != '\n') {
      /* Longer than any valid request: skip to the end of the line. */
      int c;
      while ((c = getchar()) != EOF && c != '\n') {}
      printf("error request too long\n");
      continue;
    }
    line[--length] = '\0';
    char *space = strchr(line, ' ');
    long long epoch_ms;
    if (space == NULL) {
      printf("error expected \"<epoch-ms> <entropy-hex>\"\n");
      continue;
    }
    *space = '\0';
    if (parse_epoch_ms(line, &epoch_ms) != 0) {
      printf("error epoch-ms must be a non-negative integer\n");
      continue;
    }
    const char *hex = space + 1;
    ssize_t entropy_bytes = decode_hex(hex, strlen(hex), (unsigned char *)pool->buf, MAX_ENTROPY_BYTES);
    if (entropy_bytes < MIN_ENTROPY_BYTES) {
      printf("error entropy must be %d..%d bytes of hex\n", MIN_ENTROPY_BYTES, MAX_ENTROPY_BYTES);
      continue;
    }
    const char *failure = apply(random_fd, epoch_ms, pool, entropy_bytes);
    if (failure != NULL) printf("error %s: %s\n", failure, strerror(errno));
    else printf("ok\n");
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--serve") == 0) return serve();
  if (argc != 2) return usage("expected exactly one argument");
  long long epoch_ms;
  if (parse_epoch_ms(argv[1], &epoch_ms) != 0) return usage("epoch-ms must be a non-negative integer");

  /* rand_pool_info ends in a flexible array: the entropy goes right behind the two counts. */
  struct rand_pool_info *pool = malloc(sizeof(struct rand_pool_info) + MAX_ENTROPY_BYTES);
  if (pool == NULL) return failed("malloc");
  ssize_t entropy_bytes = read_all(STDIN_FILENO, (unsigned char *)pool->buf, MAX_ENTROPY_BYTES);
  if (entropy_bytes < 0) return errno == EFBIG ? usage("too much entropy on stdin") : failed("reading stdin");
  if (entropy_bytes < MIN_ENTROPY_BYTES) return usage("too little entropy on stdin");
  int random_fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (random_fd < 0) return failed("opening /dev/urandom");
  const char *failure = apply(random_fd, epoch_ms, pool, entropy_bytes);
  if (failure != NULL) return failed(failure);
  explicit_bzero(pool->buf, MAX_ENTROPY_BYTES);
  free(pool);
  close(random_fd);
  return 0;
}
