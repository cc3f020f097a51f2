/* A small, strict XML reader for the metadata vendors put in ImageDescription (Philips'
 * DataObject tree, OME-XML). It builds a read-only tree of elements with their attributes and
 * text; it knows the five predefined entities and numeric character references, comments,
 * CDATA and processing instructions, and refuses DTDs. Every input is hostile: nesting depth,
 * element and attribute counts and the input size are bounded, and any malformation fails the
 * parse with a message giving the line. */
#ifndef TSR_FORMAT_XML_H
#define TSR_FORMAT_XML_H

#include <stdbool.h>
#include <stddef.h>

#include "tessera.h"

#define TSR_XML_MAX_INPUT ((size_t)64 << 20)
#define TSR_XML_MAX_DEPTH 128
#define TSR_XML_MAX_ELEMENTS ((size_t)1 << 18)
#define TSR_XML_MAX_ATTRIBUTES 256 /* per element */

struct tsr_xml_attr {
  const char *name; /* as written, with any namespace prefix */
  const char *value;
};

struct tsr_xml_node {
  const char *name; /* as written, with any namespace prefix */
  const struct tsr_xml_attr *attrs;
  size_t nattrs;
  /* The character data directly inside the element (its children's excluded), entities
   * decoded, white space kept; "" when there is none. NUL-terminated; text_len bytes long
   * (longer than strlen(text) if a CDATA section holds a NUL). */
  const char *text;
  size_t text_len;
  const struct tsr_xml_node *parent, *first_child, *next_sibling;
};

struct tsr_xml_doc;

/* Parses the len bytes at src. On failure *out is NULL and the message says what and where. */
tessera_status tsr_xml_parse(const char *src, size_t len, struct tsr_xml_doc **out);
void tsr_xml_free(struct tsr_xml_doc *doc);
const struct tsr_xml_node *tsr_xml_root(const struct tsr_xml_doc *doc);

/* Whether the element's name is `name` once a namespace prefix ("ome:") is set aside. */
bool tsr_xml_is(const struct tsr_xml_node *n, const char *name);
/* The value of the attribute `name` (compared without a namespace prefix), or NULL. */
const char *tsr_xml_attr(const struct tsr_xml_node *n, const char *name);
/* The first child element called `name` (NULL: any), or NULL; then the next sibling after
 * `after` called `name`. */
const struct tsr_xml_node *tsr_xml_child(const struct tsr_xml_node *n, const char *name);
const struct tsr_xml_node *tsr_xml_next(const struct tsr_xml_node *after, const char *name);

/* Decodes base64 (white space between characters allowed, padding optional at the very end)
 * into a new buffer owned by the caller; false when the text is not base64 or memory ran out. */
bool tsr_base64_decode(const char *src, size_t len, unsigned char **out, size_t *out_len);

#endif
