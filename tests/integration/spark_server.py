"""Spark's own Thrift server (HiveServer2, from PyPI's `pyspark`) on loopback: the Spark SQL engine of the `spark`
test tier, reached by the Databricks connector through databricks_proxy.py.

Binary transport, NOSASL, bound to 127.0.0.1 (HTTP mode ignores the bind host and listens on every address), the
web UI off, a Derby metastore and the parquet warehouse in a temporary directory. Start-up takes about 25 s and
0.8 GB of memory, so the tests share one server per session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyspark
from processes import free_port, stop

START_TIMEOUT_SECONDS = 240.0


class SparkThriftServer:
    """`with SparkThriftServer(tmp) as spark:` listens on 127.0.0.1:`spark.port` (HiveServer2, binary, NOSASL)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.log = home / "thriftserver.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SparkThriftServer:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("java is missing: apt-get install -y openjdk-17-jre-headless (.ci/run installs it)")
        spark_home = Path(pyspark.__file__).parent
        warehouse, metastore = self.home / "warehouse", self.home / "metastore_db"
        conf = {
            "spark.ui.enabled": "false",
            "spark.master": "local[2]",
            "spark.driver.memory": "768m",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.host": "127.0.0.1",
            "spark.sql.warehouse.dir": str(warehouse),
            "spark.sql.catalogImplementation": "hive",
            "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={metastore};create=true",
            "spark.sql.shuffle.partitions": "2",
        }
        hiveconf = {
            "hive.server2.transport.mode": "binary",
            "hive.server2.thrift.bind.host": "127.0.0.1",
            "hive.server2.thrift.port": str(self.port),
            "hive.server2.authentication": "NOSASL",
            "hive.server2.enable.doAs": "false",
        }
        args = [str(spark_home / "bin" / "spark-submit"), "--class", HIVE_SERVER_CLASS]
        for key, value in conf.items():
            args += ["--conf", f"{key}={value}"]
        for key, value in hiveconf.items():
            args += ["--hiveconf", f"{key}={value}"]
        args.append("spark-internal")
        env = {
            **os.environ,
            "SPARK_HOME": str(spark_home),
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(self.home),
            "SPARK_NO_DAEMONIZE": "1",
        }
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(args, cwd=self.home, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"Spark's Thrift server did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        stop(self._proc, timeout=30)


HIVE_SERVER_CLASS = "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2"
