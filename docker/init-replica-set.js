// Run once by the compose file's mongo-init service, as root.
// 1. Initiate the replica set (idempotent).
try {
  rs.status();
} catch (e) {
  rs.initiate({
    _id: "rs0",
    members: [
      { _id: 0, host: "mongo1:27017", priority: 2 },
      { _id: 1, host: "mongo2:27017" },
      { _id: 2, host: "mongo3:27017" },
    ],
  });
}
while (!db.hello().isWritablePrimary) { sleep(500); }

// 2. Roles. The application may read and write clinical data, but the audit log is
//    insert-only for it: it may insert and read audit events, never update or delete them.
const admin = db.getSiblingDB("admin");
if (!admin.getRole("hestiaAuditAppend")) {
  admin.createRole({
    role: "hestiaAuditAppend",
    privileges: [
      {
        resource: { db: "hestia_audit", collection: "" },
        actions: ["find", "insert", "createCollection", "createIndex", "listIndexes", "listCollections"],
      },
    ],
    roles: [],
  });
}
const password = require("fs").readFileSync("/run/secrets/hestia_db_password", "utf8").trim();
if (!admin.getUser("hestia")) {
  admin.createUser({
    user: "hestia",
    pwd: password,
    roles: [{ role: "readWrite", db: "hestia" }, { role: "hestiaAuditAppend", db: "admin" }],
  });
}
// An auditor account, for `hestia audit verify` and SIEM export: read-only on the audit log.
if (!admin.getUser("hestia-auditor")) {
  admin.createUser({
    user: "hestia-auditor",
    pwd: password + "-auditor-change-me",
    roles: [{ role: "read", db: "hestia_audit" }],
  });
}
