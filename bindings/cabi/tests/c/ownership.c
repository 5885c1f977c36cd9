/* A C caller of the C ABI, run under valgrind by scripts/test: an engine,
 * a thread serving its "noop" handler, round trips and a shutdown through
 * sg_call, bad input; every buffer the library returns is freed exactly
 * once (valgrind reports a double free or a definite leak; the library's
 * live-buffer count must be back to zero). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../include/stepgraph.h"

static uint64_t engine;

static void die(const char *what, int32_t status) {
  SgBuffer message = {0};
  sg_last_error(&message);
  fprintf(stderr, "%s: status %d: %.*s\n", what, status, (int)message.len, (const char *)message.ptr);
  sg_buffer_free(message.ptr, message.len);
  exit(1);
}

static void expect_error(const char *what, int32_t status, int32_t expected, const char *says) {
  SgBuffer message = {0};
  if (status != expected) die(what, status);
  sg_last_error(&message);
  if (!memmem(message.ptr, message.len, says, strlen(says))) {
    fprintf(stderr, "%s: the message %.*s does not say %s\n", what, (int)message.len, (const char *)message.ptr, says);
    exit(1);
  }
  sg_buffer_free(message.ptr, message.len);
}

static void *serve(void *unused) {
  (void)unused;
  const char *ok = "{\"status\":\"success\",\"result\":null}";
  for (;;) {
    SgBuffer events = {0};
    int32_t status = sg_next_events(engine, 4, 1000, &events);
    if (status == SG_STATUS_CLOSED) return NULL;
    if (status != SG_STATUS_OK) die("sg_next_events", status);
    const char *p = (const char *)events.ptr, *end = p + events.len;
    while (p && p < end && (p = memmem(p, end - p, "\"event_id\":", 11)) != NULL) {
      p += 11;
      status = sg_complete(engine, strtoull(p, NULL, 10), (const uint8_t *)ok, strlen(ok));
      if (status != SG_STATUS_OK) die("sg_complete", status);
    }
    sg_buffer_free(events.ptr, events.len);
  }
}

/* Starts `call` and waits for its reply; 1 when it succeeded. */
static int call(const char *request) {
  uint64_t ticket = 0;
  int32_t status = sg_call(engine, (const uint8_t *)request, strlen(request), &ticket);
  if (status != SG_STATUS_OK) die("sg_call", status);
  SgBuffer replies = {0};
  status = sg_next_replies(engine, 1, 60000, &replies);
  if (status != SG_STATUS_OK) die("sg_next_replies", status);
  int ok = memmem(replies.ptr, replies.len, "\"ok\":", 5) != NULL;
  sg_buffer_free(replies.ptr, replies.len);
  return ok;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s TEMPLATES_DIR\n", argv[0]);
    return 2;
  }
  char options[4096];
  snprintf(options, sizeof options, "{\"templates_dir\": \"%s\", \"handlers\": [\"noop\"], \"builtin_handlers\": true}", argv[1]);
  int32_t status = sg_engine_new((const uint8_t *)options, strlen(options), &engine);
  if (status != SG_STATUS_OK) die("sg_engine_new", status);

  pthread_t server;
  pthread_create(&server, NULL, serve, NULL);
  if (!call("{\"op\": \"roundtrip\", \"handler\": \"noop\", \"n\": 300}")) die("roundtrip", -1);
  if (call("{\"op\": \"run\", \"namespace\": \"e2e\", \"name\": \"no_such_template\"}")) die("unknown template", -1);

  const char *garbage = "{\"status\": 7}";
  expect_error("garbage outcome", sg_complete(engine, 1, (const uint8_t *)garbage, strlen(garbage)),
               SG_STATUS_INVALID_ARGUMENT, "not a step outcome");
  uint64_t other;
  expect_error("bad options", sg_engine_new((const uint8_t *)"{", 1, &other), SG_STATUS_INVALID_ARGUMENT,
               "engine options");
  SgBuffer unused = {0};
  expect_error("unknown handle", sg_next_events(engine + 1000, 1, 0, &unused), SG_STATUS_UNKNOWN_HANDLE,
               "no stepgraph engine");

  if (!call("{\"op\": \"shutdown\"}")) die("shutdown", -1);
  pthread_join(server, NULL);
  status = sg_engine_free(engine);
  if (status != SG_STATUS_OK) die("sg_engine_free", status);
  expect_error("double free of the handle", sg_engine_free(engine), SG_STATUS_UNKNOWN_HANDLE, "freed");

  if (sg_buffers_live() != 0) {
    fprintf(stderr, "%lld buffers returned and never freed\n", (long long)sg_buffers_live());
    return 1;
  }
  puts("ownership: every buffer freed once");
  return 0;
}
