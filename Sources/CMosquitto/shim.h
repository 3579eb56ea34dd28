#ifndef OPSBUS_CMOSQUITTO_SHIM_H
#define OPSBUS_CMOSQUITTO_SHIM_H
#include <mosquitto.h>
#include <mqtt_protocol.h>
#endif
