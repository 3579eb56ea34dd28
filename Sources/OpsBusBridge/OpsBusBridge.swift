/// MQTT → Redis Streams bridge (issue 4). See `Bridge`.
enum OpsBusBridgeModule {}
