// Counts the primes below N on a Spark cluster of W workers: waits for an
// executor on each worker, filters 2..N in 8 partitions, groups the primes
// by their last two digits (a shuffle) and collects each as a 64-byte line
// (more than 1 MiB below 300,000). Run by `zennet job spark TASK --class
// Primes primes.jar -- N W` (and `zennet devnet --job spark`). Prints one
// line: ZENNET-PRIMES count=C bytes=B remote_blocks=R executors=HOST,...
import java.util.*;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.spark.SparkExecutorInfo;
import org.apache.spark.api.java.*;
import org.apache.spark.scheduler.*;
import org.apache.spark.sql.SparkSession;
import scala.Tuple2;

public class Primes {
    static boolean isPrime(int n) {
        if (n < 2) return false;
        for (int d = 2; (long) d * d <= n; d++) if (n % d == 0) return false;
        return true;
    }

    public static void main(String[] args) throws Exception {
        int below = Integer.parseInt(args[0]);
        int workers = Integer.parseInt(args[1]);
        SparkSession spark = SparkSession.builder().appName("zennet-primes").getOrCreate();
        JavaSparkContext sc = new JavaSparkContext(spark.sparkContext());
        AtomicLong remote = new AtomicLong();
        sc.sc().addSparkListener(new SparkListener() {
            @Override public void onTaskEnd(SparkListenerTaskEnd e) {
                if (e.taskMetrics() != null)
                    remote.addAndGet(e.taskMetrics().shuffleReadMetrics().remoteBlocksFetched());
            }
        });
        String driver = sc.getConf().get("spark.driver.host");
        long deadline = System.currentTimeMillis() + 900_000;
        Set<String> hosts = new TreeSet<>();
        while (true) {
            hosts.clear();
            for (SparkExecutorInfo i : sc.sc().statusTracker().getExecutorInfos())
                if (!i.host().equals(driver)) hosts.add(i.host());
            if (hosts.size() >= workers) break;
            if (System.currentTimeMillis() > deadline) throw new RuntimeException("executors: " + hosts);
            Thread.sleep(1000);
        }
        List<Integer> numbers = new ArrayList<>();
        for (int n = 2; n < below; n++) numbers.add(n);
        List<Tuple2<Integer, Iterable<String>>> groups = sc.parallelize(numbers, 8)
            .filter(Primes::isPrime)
            .mapToPair(p -> new Tuple2<>(p % 100, String.format("prime %058d", p)))
            .groupByKey(8)
            .collect();
        long count = 0, bytes = 0;
        for (Tuple2<Integer, Iterable<String>> g : groups)
            for (String s : g._2()) { count++; bytes += s.length(); }
        // Listener events arrive after the job; give them a moment.
        for (int i = 0; i < 50 && remote.get() == 0; i++) Thread.sleep(200);
        System.out.println("ZENNET-PRIMES count=" + count + " bytes=" + bytes
            + " remote_blocks=" + remote.get() + " executors=" + String.join(",", hosts));
        spark.stop();
    }
}
