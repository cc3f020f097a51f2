/* Physical resolution: a slide's micrometres per pixel and the level that gives a requested
 * one (grid.c). */
#ifndef TSR_MPP_H
#define TSR_MPP_H

#include "tessera.h"

/* Micrometres per level-0 pixel (the mean of tessera.mpp-x and -y), or 0 when the slide gives
 * none. */
double tsr_slide_mpp(const tessera_slide *s);

#endif
