/*
 * NovaCron's test-guest workload, run as PID 1's child in a busybox initramfs.
 *
 * - Prints "HB <counter> <uptime_ms>" on the console every 100 ms.
 * - Optionally dirties a working set of nc.dirty_mib MiB at nc.rate MiB/s with a page
 *   content model (nc.model = random | half | text | sparse, or mixed: each page one of
 *   the four, by a hash of its number) and a write pattern (nc.pattern = uniform: any
 *   page alike; hot: 80% of writes on a tenth of the set; seq: sweeps the set in order,
 *   like a streaming buffer). Every page's content is a
 *   pure function of (seed, page, version), so the guest can re-derive what each page
 *   must hold and verify the whole set ("VERIFY ok ..." / "VERIFY FAIL ...") every
 *   nc.verify_every seconds, and print a checksum ("SUM <hex>") of it.
 * - nc.prefill=1 writes every page of the working set once (version 1) before the
 *   first heartbeat and prints "PREFILLED", so the set is populated from the start.
 * - nc.diskrate=N writes /dev/vda sequentially (wrapping) in 1 MiB O_DIRECT|O_DSYNC
 *   writes at N MB/s from a child process and prints "DW <n> <uptime_ms>" as each one
 *   completes: the host reads the guest's own write stalls from the gaps.
 *
 * Parameters come from the kernel command line (/proc/cmdline). Static, no libc extras.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <linux/fs.h>

#define PAGE 4096

static unsigned long dirty_mib = 0, rate_mib = 0, verify_every = 0, seed = 1, prefill = 0, disk_rate = 0;
static char model[16] = "half", pattern[16] = "uniform";

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t mix(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

static void fill_random(uint8_t *p, size_t n, uint64_t s) {
  for (size_t i = 0; i < n; i += 8) {
    s = mix(s + 0x9e3779b97f4a7c15ULL);
    memcpy(p + i, &s, 8);
  }
}

static const char *MODELS[] = {"random", "half", "text", "sparse"};

/* The model of page `pg`: the guest's, or for "mixed" one of the four by the page. */
static const char *model_of(uint64_t pg) {
  return strcmp(model, "mixed") == 0 ? MODELS[mix(pg * 0x9e3779b97f4a7c15ULL ^ seed) % 4] : model;
}

/* The content page `pg` must hold at version `v` (v = 0: never written, all zero). */
static void page_content(uint8_t *out, uint64_t pg, uint32_t v) {
  if (v == 0) { memset(out, 0, PAGE); return; }
  uint64_t s = mix(seed * 0x100000001b3ULL ^ pg * 0x9e3779b97f4a7c15ULL ^ v);
  const char *model = model_of(pg);
  if (strcmp(model, "random") == 0) {
    fill_random(out, PAGE, s);
  } else if (strcmp(model, "text") == 0) {
    static const char *words[] = {"the ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ", "dog ", "vm ", "page ", "nova ", "cron "};
    size_t i = 0;
    while (i < PAGE) {
      s = mix(s + 1);
      const char *w = words[s % 12];
      size_t l = strlen(w);
      if (i + l > PAGE) l = PAGE - i;
      memcpy(out + i, w, l);
      i += l;
    }
  } else if (strcmp(model, "sparse") == 0) {
    /* A fixed random base with 16 bytes that change with each version. */
    fill_random(out, PAGE, mix(seed ^ pg * 0x9e3779b97f4a7c15ULL));
    size_t off = (s % (PAGE / 16)) * 16;
    fill_random(out + off, 16, s);
  } else { /* half: half random, half zero */
    fill_random(out, PAGE / 2, s);
    memset(out + PAGE / 2, 0, PAGE / 2);
  }
}

/* The `n`th page written, by nc.pattern. */
static uint64_t next_page(uint64_t n, uint64_t pages) {
  if (strcmp(pattern, "seq") == 0) return n % pages;
  uint64_t r = mix(n ^ seed);
  if (strcmp(pattern, "hot") == 0 && r % 10 < 8) {
    uint64_t hot = pages / 10 ? pages / 10 : 1;
    return mix((r >> 8) % hot ^ (seed << 20)) % pages; /* a tenth of the set, scattered */
  }
  return r % pages;
}

static void parse_cmdline(void) {
  FILE *f = fopen("/proc/cmdline", "r");
  if (!f) return;
  char buf[4096];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n")) {
    if (!strncmp(tok, "nc.dirty_mib=", 13)) dirty_mib = strtoul(tok + 13, 0, 10);
    else if (!strncmp(tok, "nc.rate=", 8)) rate_mib = strtoul(tok + 8, 0, 10);
    else if (!strncmp(tok, "nc.verify_every=", 16)) verify_every = strtoul(tok + 16, 0, 10);
    else if (!strncmp(tok, "nc.seed=", 8)) seed = strtoul(tok + 8, 0, 10);
    else if (!strncmp(tok, "nc.prefill=", 11)) prefill = strtoul(tok + 11, 0, 10);
    else if (!strncmp(tok, "nc.model=", 9)) snprintf(model, sizeof model, "%s", tok + 9);
    else if (!strncmp(tok, "nc.pattern=", 11)) snprintf(pattern, sizeof pattern, "%s", tok + 11);
    else if (!strncmp(tok, "nc.diskrate=", 12)) disk_rate = strtoul(tok + 12, 0, 10);
  }
}

/* The nc.diskrate writer: paced 1 MiB synchronous direct writes, each reported when done. */
static void disk_writer(uint64_t start) {
  int fd = -1;
  while ((fd = open("/dev/vda", O_WRONLY | O_DIRECT | O_DSYNC)) < 0) usleep(100000);
  uint64_t size = 0;
  ioctl(fd, BLKGETSIZE64, &size);
  const size_t chunk = 1 << 20;
  void *buf;
  if (posix_memalign(&buf, 4096, chunk)) _exit(1);
  memset(buf, 0xd1, chunk);
  printf("DISKRATE %lu MB/s over %llu MiB\n", disk_rate, (unsigned long long)(size >> 20));
  uint64_t n = 0, off = 0;
  double next = (double)now_ms();
  for (;;) {
    if (size < chunk) _exit(1);
    if (off + chunk > size) off = 0;
    if (pwrite(fd, buf, chunk, (off_t)off) != (ssize_t)chunk) { printf("DW error at %llu\n", (unsigned long long)off); usleep(100000); continue; }
    off += chunk;
    printf("DW %llu %llu\n", (unsigned long long)++n, (unsigned long long)(now_ms() - start));
    next += 1000.0 * chunk / (disk_rate * 1e6);
    double wait = next - (double)now_ms();
    if (wait > 0) usleep((useconds_t)(wait * 1000));
    else if (wait < -1000) next = (double)now_ms(); /* stalled (paused VM): do not burst */
  }
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  parse_cmdline();
  if (disk_rate && fork() == 0) disk_writer(now_ms());
  uint64_t pages = dirty_mib * 256;
  uint8_t *set = NULL, *scratch = malloc(PAGE);
  uint32_t *version = NULL;
  if (pages) {
    set = calloc(pages, PAGE);
    version = calloc(pages, sizeof *version);
    if (!set || !version) { printf("DIRTY cannot allocate %lu MiB\n", dirty_mib); pages = 0; }
    else printf("DIRTY set=%luMiB rate=%luMiB/s model=%s pattern=%s seed=%lu\n", dirty_mib, rate_mib, model, pattern, seed);
    if (pages && prefill) {
      for (uint64_t pg = 0; pg < pages; pg++) { version[pg] = 1; page_content(set + pg * PAGE, pg, 1); }
      printf("PREFILLED pages=%llu\n", (unsigned long long)pages);
    }
  }
  uint64_t start = now_ms(), next = start, counter = 0, cursor = 0, last_verify = start;
  double budget = 0; /* pages we may still dirty in this tick */
  for (;;) {
    uint64_t t = now_ms();
    if (t >= next) {
      printf("HB %llu %llu\n", (unsigned long long)counter++, (unsigned long long)(t - start));
      next += 100;
      if (next < t) next = t + 100; /* we were stopped (paused VM): do not burst */
      budget += (double)rate_mib * 256 / 10;
      if (budget > pages) budget = pages;
    }
    if (pages && budget >= 1) {
      uint64_t pg = next_page(cursor++, pages);
      version[pg]++;
      page_content(set + pg * PAGE, pg, version[pg]);
      budget -= 1;
      continue;
    }
    if (pages && verify_every && t - last_verify >= verify_every * 1000) {
      uint64_t bad = 0, first_bad = 0, sum = 0;
      for (uint64_t pg = 0; pg < pages; pg++) {
        page_content(scratch, pg, version[pg]);
        if (memcmp(scratch, set + pg * PAGE, PAGE)) { if (!bad) first_bad = pg; bad++; }
        uint64_t w;
        for (size_t i = 0; i < PAGE; i += 8) { memcpy(&w, set + pg * PAGE + i, 8); sum = mix(sum ^ w); }
      }
      if (bad) printf("VERIFY FAIL pages=%llu bad=%llu first=%llu\n", (unsigned long long)pages, (unsigned long long)bad, (unsigned long long)first_bad);
      else printf("VERIFY ok pages=%llu\n", (unsigned long long)pages);
      printf("SUM %016llx\n", (unsigned long long)sum);
      last_verify = now_ms();
      continue;
    }
    uint64_t wait = next > now_ms() ? next - now_ms() : 0;
    if (wait) usleep(wait * 1000 > 10000 && pages && rate_mib ? 1000 : wait * 1000);
  }
}
