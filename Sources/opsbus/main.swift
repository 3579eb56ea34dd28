import CMosquitto
import CHiredis
var major: Int32 = 0, minor: Int32 = 0, rev: Int32 = 0
mosquitto_lib_version(&major, &minor, &rev)
print("libmosquitto \(major).\(minor).\(rev), hiredis \(HIREDIS_MAJOR).\(HIREDIS_MINOR).\(HIREDIS_PATCH)")
