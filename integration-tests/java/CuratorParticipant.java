// A participant of a ZooKeeper election built on Apache Curator, for
// leasehold's interop tests (integration-tests/tests/interop_zookeeper.rs).
//
//   java -cp <curator + zookeeper jars>:<dir> CuratorParticipant \
//        CONNECT_STRING PATH latch|selector|mutex ID [SESSION_MS]
//
// One line per event on stdout (CLOCK_MONOTONIC nanoseconds from
// System.nanoTime, the same clock as Rust's Instant on Linux):
//   JOINED <id>                           the recipe is started
//   LEADING <id> <czxid> <nanos>          Curator says this participant leads;
//                                         czxid of the first node in Curator's
//                                         own sort of the path's children
//   NOT_LEADING <id> <nanos>              printed before the node is given up
//   LEADER <hex>                          answer to `leader`: the UTF-8 bytes of
//                                         getLeader().getId() (latch, selector)
//   EXIT <id>                             about to exit
//   ERROR <id> <message>
// Commands on stdin: `release` (give up leadership and exit), `leader`.
// stdin closed or SIGTERM: give up and exit.
//
// Built with javac from Debian's packages (libcurator-recipes-java,
// openjdk-17-jdk-headless); see scripts/setup.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.leader.LeaderLatchListener;
import org.apache.curator.framework.recipes.leader.LeaderSelector;
import org.apache.curator.framework.recipes.leader.LeaderSelectorListenerAdapter;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.locks.LockInternals;
import org.apache.curator.framework.recipes.locks.StandardLockInternalsDriver;
import org.apache.curator.retry.RetryNTimes;
import org.apache.zookeeper.data.Stat;

public final class CuratorParticipant {
    private static final Object OUT = new Object();
    private static final AtomicBoolean LEADING = new AtomicBoolean(false);
    private static final CountDownLatch GIVE_UP = new CountDownLatch(1);
    private static final AtomicBoolean STOPPED = new AtomicBoolean(false);

    private static CuratorFramework client;
    private static String path;
    private static String mode;
    private static String id;
    private static LeaderLatch latch;
    private static LeaderSelector selector;
    private static InterProcessMutex mutex;
    private static Thread mutexThread;

    static void say(String line) {
        synchronized (OUT) {
            System.out.println(line);
            System.out.flush();
        }
    }

    static String lockName() {
        return mode.equals("latch") ? "latch-" : "lock-";
    }

    /// The czxid of the first node as Curator itself sorts the children.
    static long firstCzxid() throws Exception {
        List<String> children = client.getChildren().forPath(path);
        List<String> sorted =
                LockInternals.getSortedChildren(lockName(), new StandardLockInternalsDriver(), children);
        if (sorted.isEmpty()) {
            return -1;
        }
        Stat stat = client.checkExists().forPath(path + "/" + sorted.get(0));
        return stat == null ? -1 : stat.getCzxid();
    }

    static void leading() {
        long czxid;
        try {
            czxid = firstCzxid();
        } catch (Exception e) {
            czxid = -1;
        }
        LEADING.set(true);
        say("LEADING " + id + " " + czxid + " " + System.nanoTime());
    }

    /// Printed before the node is given up, so the stamp is not later than
    /// the moment someone else can lead.
    static void notLeading() {
        if (LEADING.compareAndSet(true, false)) {
            say("NOT_LEADING " + id + " " + System.nanoTime());
        }
    }

    static synchronized void stop() {
        if (!STOPPED.compareAndSet(false, true)) {
            return;
        }
        try {
            switch (mode) {
                case "latch":
                    notLeading();
                    latch.close();
                    break;
                case "selector":
                    GIVE_UP.countDown();
                    selector.close();
                    notLeading();
                    break;
                default:
                    GIVE_UP.countDown();
                    if (mutexThread != null) {
                        mutexThread.join(10_000);
                    }
                    notLeading();
                    break;
            }
        } catch (Exception e) {
            say("ERROR " + id + " stop: " + e);
        }
        client.close();
        say("EXIT " + id);
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println("usage: CuratorParticipant CONNECT_STRING PATH latch|selector|mutex ID [SESSION_MS]");
            System.exit(2);
        }
        String connect = args[0];
        path = args[1];
        mode = args[2];
        id = args[3];
        int session = args.length > 4 ? Integer.parseInt(args[4]) : 2000;
        // defaultData: the node data of recipes that write none of their own
        // (a plain InterProcessMutex; Curator's default is the local IP).
        client = CuratorFrameworkFactory.builder()
                .connectString(connect)
                .sessionTimeoutMs(session)
                .connectionTimeoutMs(10_000)
                .retryPolicy(new RetryNTimes(20, 200))
                .defaultData(id.getBytes(StandardCharsets.UTF_8))
                .build();
        client.start();
        if (!client.blockUntilConnected(30, TimeUnit.SECONDS)) {
            say("ERROR " + id + " not connected to " + connect + " within 30 s");
            System.exit(1);
        }
        Runtime.getRuntime().addShutdownHook(new Thread(CuratorParticipant::stop));
        switch (mode) {
            case "latch":
                latch = new LeaderLatch(client, path, id);
                latch.addListener(new LeaderLatchListener() {
                    @Override
                    public void isLeader() {
                        leading();
                    }

                    @Override
                    public void notLeader() {
                        notLeading();
                    }
                });
                latch.start();
                break;
            case "selector":
                selector = new LeaderSelector(client, path, new LeaderSelectorListenerAdapter() {
                    @Override
                    public void takeLeadership(CuratorFramework c) throws Exception {
                        leading();
                        try {
                            GIVE_UP.await();
                        } finally {
                            notLeading();
                        }
                    }
                });
                selector.setId(id);
                selector.start();
                break;
            case "mutex":
                mutex = new InterProcessMutex(client, path);
                mutexThread = new Thread(() -> {
                    try {
                        mutex.acquire();
                        leading();
                        GIVE_UP.await();
                        notLeading();
                        mutex.release();
                    } catch (Exception e) {
                        say("ERROR " + id + " mutex: " + e);
                    }
                });
                mutexThread.setDaemon(true);
                mutexThread.start();
                break;
            default:
                System.err.println("unknown mode " + mode + "; use latch, selector or mutex");
                System.exit(2);
        }
        say("JOINED " + id);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String command = line.trim();
            if (command.equals("release")) {
                break;
            } else if (command.equals("leader")) {
                try {
                    String leader = mode.equals("latch")
                            ? latch.getLeader().getId()
                            : mode.equals("selector") ? selector.getLeader().getId() : "";
                    StringBuilder hex = new StringBuilder();
                    for (byte b : leader.getBytes(StandardCharsets.UTF_8)) {
                        hex.append(String.format("%02x", b));
                    }
                    say("LEADER " + hex);
                } catch (Exception e) {
                    say("ERROR " + id + " leader: " + e);
                }
            }
        }
        stop();
        System.exit(0);
    }
}
