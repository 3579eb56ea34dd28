#ifndef OPSBUS_CHIREDIS_SHIM_H
#define OPSBUS_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#endif
