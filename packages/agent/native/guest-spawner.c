/*
 * guest-spawner: starts the agent's commands from a process that is cheap to fork.
 *
 * The agent is a Node process of about 60 MB. Forking it copies its page tables, and afterwards every page it
 * writes takes a copy-on-write fault; under TCG that made each command start cost 20-60 ms in the guest, against
 * 8 ms for a shell's fork and exec. This helper is a few hundred KB, started once with the agent (and so part of
 * every snapshot), and forks the commands instead.
 *
 * The command's stdio are ordinary pipes, as with Node's own spawn, so `echo x > /dev/stderr` works in the command
 * (it would not with sockets). The agent takes its ends of the pipes by opening /proc/<helper>/fd/<n>, then tells
 * the helper to close its copies.
 *
 *     guest-spawner --serve
 *
 * Requests on stdin, one per line, fields separated by one space; bytes that may hold anything are hex:
 *     spawn <id> <stdin 0|1> <uid|-> <gid|-> <cwd-hex> <argc> <arg-hex>... <envc> <env-hex>...
 *     release <id>
 * Answers on stdout, one per line:
 *     spawned <id> <pid> <stdin-fd|-1> <stdout-fd> <stderr-fd>   the helper's fds of the agent's pipe ends
 *     failed <id> <errno> <step>                                 nothing was left running
 *     exit <pid> <exit-code|-1> <signal-number|0>                the command's process ended (it was reaped)
 * A command runs in a session of its own (setsid), so its process group id is its pid. Without a pipe for stdin it
 * reads /dev/null. `uid`/`gid` switch user (supplementary groups dropped) before `cwd` is entered.
 *
 * Exits when stdin closes. Built static (gcc -static -Os -s) onto the system disk, so it runs in any root filesystem.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Arguments and environment are bounded by the kernel's ARG_MAX (2 MiB by default); hex doubles them. */
#define MAX_LINE (8 * 1024 * 1024)
#define MAX_ID 64
#define MAX_HELD 1024
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct held {
  char id[MAX_ID + 1];
  int fds[3];
};

static struct held held[MAX_HELD];

static void answer(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void answer(const char *format, ...) {
  va_list args;
  va_start(args, format);
  vprintf(format, args);
  va_end(args);
  fflush(stdout);
}

static int valid_id(const char *id) {
  size_t length = strlen(id);
  if (length == 0 || length > MAX_ID) return 0;
  for (size_t i = 0; i < length; i++) {
    char c = id[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-')) return 0;
  }
  return 1;
}

/* Decodes hex in place into a NUL-terminated string; NULL on a bad digit, odd length or an embedded NUL. */
static char *decode_hex(char *text) {
  size_t length = strlen(text);
  if (length % 2 != 0) return NULL;
  for (size_t i = 0; i < length; i += 2) {
    int value = 0;
    for (size_t j = 0; j < 2; j++) {
      char c = text[i + j];
      int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (digit < 0) return NULL;
      value = value * 16 + digit;
    }
    if (value == 0) return NULL;
    text[i / 2] = (char)value;
  }
  text[length / 2] = '\0';
  return text;
}

/* Parses "-" (unchanged: -1) or a decimal id. */
static int parse_id_number(const char *text, long *out) {
  if (strcmp(text, "-") == 0) {
    *out = -1;
    return 0;
  }
  if (*text < '0' || *text > '9') return -1;
  errno = 0;
  char *end = NULL;
  unsigned long value = strtoul(text, &end, 10);
  if (errno != 0 || *end != '\0' || value > 0x7fffffffUL) return -1;
  *out = (long)value;
  return 0;
}

static int parse_count(const char *text, size_t limit, size_t *out) {
  if (text == NULL || *text < '0' || *text > '9') return -1;
  char *end = NULL;
  unsigned long value = strtoul(text, &end, 10);
  if (*end != '\0' || value > limit) return -1;
  *out = (size_t)value;
  return 0;
}

/* In the child: reports errno and the failing step through the status pipe, then exits. */
static void child_failed(int status_fd, const char *step) {
  int error = errno;
  char message[64];
  int length = snprintf(message, sizeof message, "%d %s", error, step);
  if (write(status_fd, message, (size_t)length) < 0) {}
  _exit(127);
}

/* execve with a PATH search over the command's own environment, like execvp: EACCES wins over ENOENT. */
static void exec_in_path(char **argv, char **envp) {
  const char *file = argv[0];
  if (strchr(file, '/') != NULL) {
    execve(file, argv, envp);
    return;
  }
  const char *path = DEFAULT_PATH;
  for (char **entry = envp; *entry != NULL; entry++) {
    if (strncmp(*entry, "PATH=", 5) == 0) path = *entry + 5;
  }
  int saw_eacces = 0;
  char candidate[PATH_MAX];
  for (const char *start = path;; ) {
    const char *end = strchr(start, ':');
    size_t dir_length = end == NULL ? strlen(start) : (size_t)(end - start);
    int length = dir_length == 0 ? snprintf(candidate, sizeof candidate, "%s", file)
                                 : snprintf(candidate, sizeof candidate, "%.*s/%s", (int)dir_length, start, file);
    if (length > 0 && (size_t)length < sizeof candidate) {
      execve(candidate, argv, envp);
      if (errno == EACCES) saw_eacces = 1;
    }
    if (end == NULL) break;
    start = end + 1;
  }
  errno = saw_eacces ? EACCES : ENOENT;
}

static void close_all(int *fds, size_t count) {
  for (size_t i = 0; i < count; i++) {
    if (fds[i] >= 0) close(fds[i]);
    fds[i] = -1;
  }
}

static struct held *free_slot(void) {
  for (size_t i = 0; i < MAX_HELD; i++) {
    if (held[i].id[0] == '\0') return &held[i];
  }
  return NULL;
}

static void spawn(char **fields, size_t count) {
  /* spawn <id> <stdin> <uid> <gid> <cwd> <argc> <args>... <envc> <envs>... */
  const char *id = count > 1 && valid_id(fields[1]) ? fields[1] : NULL;
  long uid, gid;
  size_t argc, envc;
  if (count < 8 || id == NULL || (strcmp(fields[2], "0") != 0 && strcmp(fields[2], "1") != 0) ||
      parse_id_number(fields[3], &uid) != 0 || parse_id_number(fields[4], &gid) != 0 ||
      parse_count(fields[6], count - 7, &argc) != 0 || argc == 0 || 7 + argc >= count ||
      parse_count(fields[7 + argc], count - 8 - argc, &envc) != 0 || 8 + argc + envc != count) {
    answer("failed %s %d request\n", id == NULL ? "-" : id, EINVAL);
    return;
  }
  int wants_stdin = fields[2][0] == '1';
  char *cwd = decode_hex(fields[5]);
  char **argv = calloc(argc + 1, sizeof(char *));
  char **envp = calloc(envc + 1, sizeof(char *));
  if (argv == NULL || envp == NULL) {
    free(argv);
    free(envp);
    answer("failed %s %d request\n", id, ENOMEM);
    return;
  }
  int bad = cwd == NULL;
  for (size_t i = 0; i < argc && !bad; i++) bad = (argv[i] = decode_hex(fields[7 + i])) == NULL;
  for (size_t i = 0; i < envc && !bad; i++) bad = (envp[i] = decode_hex(fields[8 + argc + i])) == NULL;
  struct held *slot = bad ? NULL : free_slot();
  if (bad || slot == NULL) {
    free(argv);
    free(envp);
    answer("failed %s %d request\n", id, bad ? EINVAL : EMFILE);
    return;
  }

  /* pipes[n][0] is the read end. The child's ends: stdin's read end, stdout's and stderr's write ends. */
  int pipes[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}};
  int status[2] = {-1, -1};
  const char *step = NULL;
  for (int n = 0; n < 3 && step == NULL; n++) {
    if (n == 0 && !wants_stdin) continue;
    if (pipe2(pipes[n], O_CLOEXEC) != 0) step = "pipe";
  }
  if (step == NULL && pipe2(status, O_CLOEXEC) != 0) step = "pipe";
  pid_t pid = -1;
  if (step == NULL) {
    pid = fork();
    if (pid < 0) step = "fork";
  }
  if (pid == 0) {
    close(status[0]);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    if (setsid() < 0) child_failed(status[1], "setsid");
    int in = wants_stdin ? pipes[0][0] : open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (in < 0 || dup2(in, 0) < 0 || dup2(pipes[1][1], 1) < 0 || dup2(pipes[2][1], 2) < 0) child_failed(status[1], "stdio");
    if (uid >= 0 || gid >= 0) {
      if (setgroups(0, NULL) != 0 && errno != EPERM) child_failed(status[1], "setgroups");
    }
    if (gid >= 0 && setgid((gid_t)gid) != 0) child_failed(status[1], "setgid");
    if (uid >= 0 && setuid((uid_t)uid) != 0) child_failed(status[1], "setuid");
    if (chdir(cwd) != 0) child_failed(status[1], "chdir");
    exec_in_path(argv, envp);
    child_failed(status[1], "exec");
  }
  free(argv);
  free(envp);
  /* The parent keeps only the agent's ends: stdin's write end, stdout's and stderr's read ends. */
  int child_ends[3] = {pipes[0][0], pipes[1][1], pipes[2][1]};
  close_all(child_ends, 3);
  int agent_ends[3] = {pipes[0][1], pipes[1][0], pipes[2][0]};
  if (step != NULL) {
    int error = errno;
    close_all(agent_ends, 3);
    close_all(status, 2);
    answer("failed %s %d %s\n", id, error, step);
    return;
  }
  close(status[1]);
  char report[64] = {0};
  ssize_t got;
  do got = read(status[0], report, sizeof report - 1);
  while (got < 0 && errno == EINTR);
  close(status[0]);
  if (got > 0) {
    /* The child failed before exec and exited: reap it here so no exit line follows for it. */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    close_all(agent_ends, 3);
    int error = atoi(report);
    const char *failed_step = strchr(report, ' ');
    answer("failed %s %d %s\n", id, error, failed_step == NULL ? "exec" : failed_step + 1);
    return;
  }
  snprintf(slot->id, sizeof slot->id, "%s", id);
  memcpy(slot->fds, agent_ends, sizeof agent_ends);
  answer("spawned %s %d %d %d %d\n", id, (int)pid, agent_ends[0], agent_ends[1], agent_ends[2]);
}

static void release(char **fields, size_t count) {
  if (count != 2 || !valid_id(fields[1])) return;
  for (size_t i = 0; i < MAX_HELD; i++) {
    if (held[i].id[0] != '\0' && strcmp(held[i].id, fields[1]) == 0) {
      close_all(held[i].fds, 3);
      held[i].id[0] = '\0';
      return;
    }
  }
}

static void handle_line(char *line) {
  /* Count the fields first: the argument list can be long. */
  size_t count = 1;
  for (char *c = line; *c != '\0'; c++) count += *c == ' ';
  char **fields = calloc(count + 1, sizeof(char *));
  if (fields == NULL) {
    answer("failed - %d request\n", ENOMEM);
    return;
  }
  size_t n = 0;
  for (char *field = line, *next; field != NULL; field = next) {
    next = strchr(field, ' ');
    if (next != NULL) *next++ = '\0';
    fields[n++] = field;
  }
  if (strcmp(fields[0], "spawn") == 0) spawn(fields, n);
  else if (strcmp(fields[0], "release") == 0) release(fields, n);
  else answer("failed - %d request\n", EINVAL);
  free(fields);
}

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    if (WIFEXITED(status)) answer("exit %d %d 0\n", (int)pid, WEXITSTATUS(status));
    else if (WIFSIGNALED(status)) answer("exit %d -1 %d\n", (int)pid, WTERMSIG(status));
  }
}

int main(int argc, char **argv) {
  if (argc != 2 || strcmp(argv[1], "--serve") != 0) {
    fprintf(stderr, "usage: guest-spawner --serve\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  sigset_t children;
  sigemptyset(&children);
  sigaddset(&children, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &children, NULL) != 0) return 1;
  int signal_fd = signalfd(-1, &children, SFD_CLOEXEC | SFD_NONBLOCK);
  if (signal_fd < 0) {
    perror("guest-spawner: signalfd");
    return 1;
  }
  size_t capacity = 64 * 1024, filled = 0;
  char *buffer = malloc(capacity);
  int discarding = 0; /* inside a line longer than MAX_LINE */
  if (buffer == NULL) return 1;
  for (;;) {
    struct pollfd fds[2] = {{.fd = STDIN_FILENO, .events = POLLIN}, {.fd = signal_fd, .events = POLLIN}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      perror("guest-spawner: poll");
      return 1;
    }
    if (fds[1].revents & POLLIN) {
      struct signalfd_siginfo info;
      while (read(signal_fd, &info, sizeof info) > 0) {}
      reap();
    }
    if (!(fds[0].revents & (POLLIN | POLLHUP))) continue;
    if (filled == capacity) {
      size_t grown = capacity * 2 > MAX_LINE + 1 ? MAX_LINE + 1 : capacity * 2;
      if (grown == capacity) {
        /* Over the limit: drop what we have and the rest of this line. */
        filled = 0;
        discarding = 1;
      } else {
        char *bigger = realloc(buffer, grown);
        if (bigger == NULL) return 1;
        buffer = bigger;
        capacity = grown;
      }
    }
    ssize_t got = read(STDIN_FILENO, buffer + filled, capacity - filled);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return 0;
    filled += (size_t)got;
    size_t start = 0;
    for (size_t i = filled - (size_t)got; i < filled; i++) {
      if (buffer[i] != '\n') continue;
      buffer[i] = '\0';
      if (discarding) {
        discarding = 0;
        answer("failed - %d request\n", E2BIG);
      } else {
        handle_line(buffer + start);
      }
      start = i + 1;
    }
    memmove(buffer, buffer + start, filled - start);
    filled -= start;
  }
}
