/*
 * store/record.h - the stored-response record. Its type, byte layout and codec live in
 * store/format.h with every other layout that reaches the disk or crosses a process.
 */
#ifndef CN_STORE_RECORD_H
#define CN_STORE_RECORD_H

#include "store/format.h"

#endif
