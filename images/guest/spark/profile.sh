# Where Spark and its JRE are in zennet-spark. SPARK_SCALA_VERSION stands in
# for the build tree Spark's launcher otherwise looks for.
export SPARK_HOME=/opt/spark
export SPARK_SCALA_VERSION=2.13
export JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
