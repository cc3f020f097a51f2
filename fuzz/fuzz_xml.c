/* Fuzz target: the XML reader and base64 decoder behind the Philips and OME vendors, on
 * arbitrary bytes. The input is parsed as a document; a parsed tree is walked as the vendors
 * walk it (names, attributes, children by name, text as a C string) and its promises are
 * checked; each element's text and the whole input are also decoded as base64. The bytes are
 * copied to a buffer of their exact size, without a terminating NUL, so that a read past the
 * input is an AddressSanitizer report rather than a silent overread. */
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "format/xml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_base64(const char *s, size_t len) {
  unsigned char *out;
  size_t n;
  if (tsr_base64_decode(s, len, &out, &n)) {
    if (n == 0 || n > len / 4 * 3 + 3)
      abort();
    tsr_free(out);
  }
}

/* What the vendors rely on for every element: names and values are C strings, text is a C
 * string of text_len bytes (Philips compares it with strcmp; OME copies it with strdup). */
static void check_node(const struct tsr_xml_node *n) {
  if (!n->name || !n->name[0] || !n->text)
    abort();
  if (strlen(n->text) > n->text_len)
    abort();
  for (size_t i = 0; i < n->nattrs; i++) {
    const struct tsr_xml_attr *a = &n->attrs[i];
    if (!a->name || !a->value || strlen(a->name) == 0)
      abort();
    if (tsr_xml_attr(n, a->name) == NULL && strchr(a->name, ':') == NULL)
      abort();
    (void)strlen(a->value);
  }
  const char *colon = strchr(n->name, ':');
  if (!tsr_xml_is(n, colon ? colon + 1 : n->name))
    abort();
  for (const struct tsr_xml_node *c = tsr_xml_child(n, NULL); c; c = tsr_xml_next(c, NULL))
    if (c->parent != n)
      abort();
  const struct tsr_xml_node *c = tsr_xml_child(n, "Attribute");
  for (; c; c = tsr_xml_next(c, "Attribute"))
    (void)tsr_xml_attr(c, "Name");
  check_base64(n->text, n->text_len);
}

/* Every element, depth first, without recursion (the tree may be 128 deep). */
static void walk(const struct tsr_xml_node *root) {
  const struct tsr_xml_node *n = root;
  while (n) {
    check_node(n);
    if (n->first_child) {
      n = n->first_child;
      continue;
    }
    while (n && !n->next_sibling)
      n = n == root ? NULL : n->parent;
    n = n && n != root ? n->next_sibling : NULL;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *src = malloc(size ? size : 1);
  if (!src)
    return 0;
  memcpy(src, data, size);
  struct tsr_xml_doc *doc;
  if (tsr_xml_parse(src, size, &doc) == TESSERA_OK) {
    const struct tsr_xml_node *root = tsr_xml_root(doc);
    if (!root || root->parent || root->next_sibling)
      abort();
    walk(root);
    tsr_xml_free(doc);
  } else if (doc) {
    abort();
  }
  check_base64(src, size);
  free(src);
  return 0;
}
