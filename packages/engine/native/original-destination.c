/*
 * Node addon: the destination a TCP connection was originally sent to before netfilter redirected it to us
 * (getsockopt SO_ORIGINAL_DST). The egress proxy needs it for every sandbox connection, and Node has no way to ask.
 *
 * Built at set-up with gcc alone: the few Node-API functions it uses are declared here instead of coming from
 * node_api.h, which Debian's nodejs package does not ship. Node-API is an ABI that stays stable across Node versions,
 * so these declarations do not go stale; the symbols are resolved from the running node binary at load time.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status;
typedef napi_value (*napi_callback)(napi_env env, napi_callback_info info);

extern napi_status napi_get_cb_info(napi_env, napi_callback_info, size_t *, napi_value *, napi_value *, void **);
extern napi_status napi_get_value_int32(napi_env, napi_value, int *);
extern napi_status napi_create_string_utf8(napi_env, const char *, size_t, napi_value *);
extern napi_status napi_create_uint32(napi_env, unsigned int, napi_value *);
extern napi_status napi_create_object(napi_env, napi_value *);
extern napi_status napi_set_named_property(napi_env, napi_value, const char *, napi_value);
extern napi_status napi_create_function(napi_env, const char *, size_t, napi_callback, void *, napi_value *);
extern napi_status napi_throw_error(napi_env, const char *, const char *);

#define NAPI_AUTO_LENGTH ((size_t)-1)

/* originalDestination(fd) → { address, port } */
static napi_value original_destination(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int fd = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != 0 || argc < 1 || napi_get_value_int32(env, argv[0], &fd) != 0) {
    napi_throw_error(env, "ERR_INVALID_ARG", "originalDestination(fd): fd must be a number");
    return NULL;
  }
  struct sockaddr_in destination;
  socklen_t length = sizeof destination;
  memset(&destination, 0, sizeof destination);
  if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &destination, &length) != 0) {
    char message[128];
    snprintf(message, sizeof message, "getsockopt(SO_ORIGINAL_DST) failed: %s", strerror(errno));
    napi_throw_error(env, "ERR_NO_ORIGINAL_DESTINATION", message);
    return NULL;
  }
  char address[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &destination.sin_addr, address, sizeof address);
  napi_value result, address_value, port_value;
  napi_create_object(env, &result);
  napi_create_string_utf8(env, address, NAPI_AUTO_LENGTH, &address_value);
  napi_create_uint32(env, ntohs(destination.sin_port), &port_value);
  napi_set_named_property(env, result, "address", address_value);
  napi_set_named_property(env, result, "port", port_value);
  return result;
}

/* Node looks this symbol up when it loads an addon that does not register itself. */
__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "originalDestination", NAPI_AUTO_LENGTH, original_destination, NULL, &fn);
  napi_set_named_property(env, exports, "originalDestination", fn);
  return exports;
}

/* Declares the Node-API version the addon needs (1: the functions above all exist since then). */
__attribute__((visibility("default"))) int node_api_module_get_api_version_v1(void) { return 1; }
