/* Name maps (names.h) and "did you mean" suggestions for missing names. */
#include "internal.h"

#include <kaun/names.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* `s` with every `from` replaced by `to`; frees `s` (NULL when out of memory). */
static char *replace_all(char *s, const char *from, const char *to) {
  size_t fl = strlen(from), tl = strlen(to), count = 0;
  if (fl == 0) return s;
  for (const char *p = strstr(s, from); p; p = strstr(p + fl, from)) count++;
  if (!count) return s;
  char *out = malloc(strlen(s) - count * fl + count * tl + 1);
  if (!out) {
    free(s);
    return NULL;
  }
  char *o = out;
  const char *p = s, *q;
  while ((q = strstr(p, from))) {
    memcpy(o, p, (size_t)(q - p));
    o += q - p;
    memcpy(o, to, tl);
    o += tl;
    p = q + fl;
  }
  strcpy(o, p);
  free(s);
  return out;
}

char *kaun_name_map_apply(const kaun_name_map *map, const char *name) {
  const char *rest = name;
  if (map && map->strip_prefix && strncmp(rest, map->strip_prefix, strlen(map->strip_prefix)) == 0)
    rest += strlen(map->strip_prefix);
  const char *add = map && map->add_prefix ? map->add_prefix : "";
  size_t n = strlen(add) + strlen(rest) + 1;
  char *s = malloc(n);
  if (!s) return NULL;
  snprintf(s, n, "%s%s", add, rest);
  for (size_t i = 0; s && map && map->renames && i < map->nrenames; i++)
    if (map->renames[i].from && map->renames[i].to)
      s = replace_all(s, map->renames[i].from, map->renames[i].to);
  return s;
}

/* Levenshtein distance, bounded work (names are short). */
static size_t distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 512 || lb > 512) return la > lb ? la : lb;
  size_t *row = malloc((lb + 1) * sizeof *row);
  if (!row) return SIZE_MAX;
  for (size_t j = 0; j <= lb; j++) row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t best = diag + (a[i - 1] != b[j - 1]);
      if (row[j] + 1 < best) best = row[j] + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  size_t d = row[lb];
  free(row);
  return d;
}

const char *kaun__names_closest(const char *want, const char *const *mapped,
                                const char *const *orig, size_t n, char *buf, size_t size) {
  size_t best[3] = {SIZE_MAX, SIZE_MAX, SIZE_MAX}, who[3] = {0, 0, 0};
  /* bounded work, whatever a file holds: names that cannot beat the third
   * best (their lengths differ by more) are skipped, and the search stops
   * after about 50 million cells of the distance table */
  size_t la = strlen(want);
  uint64_t budget = 50000000;
  for (size_t i = 0; i < n; i++) {
    size_t lb = strlen(mapped[i]), lower = la > lb ? la - lb : lb - la;
    if (lower >= best[2]) continue;
    uint64_t cells = (uint64_t)(la < 512 ? la + 1 : 1) * (lb < 512 ? lb + 1 : 1);
    if (cells > budget) break;
    budget -= cells;
    size_t d = distance(want, mapped[i]);
    for (int k = 0; k < 3; k++)
      if (d < best[k]) {
        for (int m = 2; m > k; m--) best[m] = best[m - 1], who[m] = who[m - 1];
        best[k] = d;
        who[k] = i;
        break;
      }
  }
  size_t len = 0;
  if (size) buf[0] = 0;
  for (int k = 0; k < 3 && best[k] != SIZE_MAX && len < size; k++) {
    const char *m = mapped[who[k]], *o = orig ? orig[who[k]] : m;
    int w = strcmp(o, m) == 0 ? snprintf(buf + len, size - len, "%s'%.150s'", k ? ", " : "", m)
                              : snprintf(buf + len, size - len, "%s'%.100s' (from '%.100s')",
                                         k ? ", " : "", m, o);
    len += w > 0 ? (size_t)w : 0;
  }
  return buf;
}
