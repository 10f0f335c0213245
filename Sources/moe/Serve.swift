import ArgumentParser
import Cluster
import Foundation
import Synchronization
import Hummingbird
import Logging
import Models
import ServiceLifecycle
import Tokenizers

extension MoE {
    /// `moe serve`: the cluster behind an OpenAI-compatible HTTP API on rank 0.
    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Serve the model over an OpenAI-compatible HTTP API (rank 0; every rank computes).",
            discussion: """
            Endpoints: POST /v1/completions, POST /v1/chat/completions (both with "stream": true as server-sent \
            events), POST /tokenize, POST /detokenize, GET /v1/models, GET /health (503 while loading or \
            draining), GET /metrics (Prometheus). Requests join the running batch at the next step (continuous \
            batching). SIGUSR1 (what mpirun forwards) or SIGTERM to rank 0 drains: new requests get 503, those in \
            flight finish, then the job exits 0. A SIGTERM from mpirun itself (it ends the job: a rank was lost) fails \
            the requests in flight with an error at once and exits 1. Run it under mpirun, or alone as one rank.
            """)

        @OptionGroup var modelOptions: ModelOptions
        @OptionGroup var cluster: ClusterOptions

        @Option(help: "Tokenizer folder (default: the model folder; for built-in presets, the Mixtral tokenizer moe ships).")
        var tokenizer: String?

        @Option(help: "A Jinja chat template file (default: the tokenizer's chat_template).")
        var chatTemplate: String?

        @Option(help: "Address to listen on.")
        var host = "127.0.0.1"

        @Option(help: "Port to listen on (0: any free port; the chosen one is printed).")
        var port = 8000

        @Option(help: "Require 'Authorization: Bearer KEY' on /v1 routes.")
        var apiKey: String?

        @Option(help: "Requests waiting for a place in the batch at most; more get 429.")
        var maxQueue = 64

        @Option(help: "Sequences in the running batch at most.")
        var maxBatch = 8

        @Option(help: "The model name the API reports and accepts (default: the model folder's name, or the preset's).")
        var servedModelName: String?

        @Option(help: "Largest request body in bytes.")
        var maxBodyBytes = 4 << 20

        func validate() throws {
            if maxQueue < 0 { throw ValidationError("--max-queue must be >= 0") }
            if maxBatch < 1 { throw ValidationError("--max-batch must be at least 1") }
            if !(0...65535).contains(port) { throw ValidationError("--port must be 0...65535") }
            if maxBodyBytes < 1024 { throw ValidationError("--max-body-bytes must be at least 1024") }
            try cluster.validateCalibration()
        }

        var modelName: String {
            servedModelName ?? modelOptions.model.map { URL(fileURLWithPath: $0).standardizedFileURL.lastPathComponent } ?? modelOptions.preset
        }

        func run() throws {
            let rank = Int(ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_RANK"] ?? "0") ?? 0
            let metrics = ServerMetrics()
            let queue = ServeQueue(capacity: maxBatch + maxQueue, metrics: metrics)
            let server = OpenAIServer(queue: queue, metrics: metrics, apiKey: apiKey, maxBodyBytes: maxBodyBytes)
            // Rank 0 listens before loading, so /health can say it is not ready yet.
            let http = rank == 0 ? try HTTPService.start(server.router(), host: host, port: port) : nil
            if let http { emit("moe serve: listening on http://\(host):\(http.port) (loading)") }
            // mpirun forwards SIGUSR1 to every rank: only the head acts on it (the others follow its plan).
            signal(SIGUSR1, SIG_IGN)
            @Sendable func drain(_ s: Int32) {
                FileHandle.standardError.write(Data("moe serve: draining (signal \(s)): finishing requests in flight\n".utf8))
                queue.close()
            }
            let signals: [any DispatchSourceSignal] = rank == 0 ? [SIGUSR1].map { s in
                let source = DispatchSource.makeSignalSource(signal: s, queue: .global())
                source.setEventHandler { drain(s) }
                source.resume()
                return source
            } : []
            defer { signals.forEach { $0.cancel() } }
            if rank == 0 {
                let underMPI = DistributedRun.active
                TermSignal.install { sender in
                    guard TermSignal.isLauncher(sender, underMPI: underMPI) else { return drain(SIGTERM) }
                    let why = "the cluster stopped: mpirun is ending the job (a rank exited or mpirun was signalled) before this request finished"
                    FileHandle.standardError.write(Data("moe serve: mpirun is ending the job (SIGTERM from it): failing the requests in flight\n".utf8))
                    queue.failAll(why)
                    usleep(300_000)  // the error events and responses leave before mpirun's SIGKILL, a second after its SIGTERM
                    _exit(1)
                }
            }

            let run: DistributedRun
            var loaded: OpenAIServer.Model?  // rank 0's, once its tokenizer and template are read
            do {
                run = try DistributedRun.start(model: modelOptions, cluster: cluster) { model, rank in
                    guard rank == 0 else { return }
                    let tokenizer = try TokenizerLocator.load(explicit: tokenizer, model: modelOptions.model, vocabulary: model.spec.vocabSize)
                    guard let tokenizer else {
                        throw ValidationError("moe serve needs a tokenizer: give --tokenizer DIR")
                    }
                    var source = tokenizer.config.chatTemplate
                    if let chatTemplate {
                        guard let data = FileManager.default.contents(atPath: chatTemplate) else { throw ValidationError("cannot read \(chatTemplate)") }
                        source = String(decoding: data, as: UTF8.self)
                    }
                    let template = try source.map { try ChatTemplate($0) }
                    let eos = tokenizer.config.eosToken.flatMap { tokenizer.id(of: $0) }
                    loaded = OpenAIServer.Model(name: modelName, maxModelLen: model.maxModelLen, vocabulary: model.spec.vocabSize,
                                                tokenizer: tokenizer, template: template, eos: eos.map { [$0] } ?? [])
                }
            } catch {
                http?.stop()
                throw error
            }
            defer { run.finish() }
            run.engine.sharesCounters = true  // every rank: expert rows and bytes for /metrics
            run.engine.maxBatch = maxBatch
            run.engine.maxStepTokens = cluster.maxStepTokens ?? 2048
            do {
                // /health stays "loading" until the warm-up pass is done.
                let warmUp = run.engine.warmUpTokens, start = Clock.now
                try run.engine.warmUp(tokens: warmUp)
                if let loaded { server.model.withLock { $0 = loaded } }
                if rank == 0 {
                    emit(String(format: "moe serve: ready, %d rank%@, model '%@' (warm-up pass of %d tokens: %.1f s)", run.comm.size,
                                run.comm.size == 1 ? "" : "s", modelName, warmUp, Clock.since(start)))
                }
                _ = try run.engine.run(source: queue) { _ in }
            } catch {
                queue.failAll("the cluster stopped: \(error)")
                http?.stop()
                if rank == 0 { FileHandle.standardError.write(Data("moe: error: \(error)\n".utf8)) }
                throw ExitCode(1)
            }
            http?.stop()
            if rank == 0 { emit("moe serve: drained, exiting") }
        }
    }
}

/// Hummingbird on its own threads, started from and stopped by synchronous code (the step loop's thread).
final class HTTPService: Sendable {
    let group: ServiceGroup
    let task: Task<Void, any Error>
    let port: Int

    private init(group: ServiceGroup, task: Task<Void, any Error>, port: Int) {
        self.group = group
        self.task = task
        self.port = port
    }

    /// Binds and starts serving; throws when the address cannot be bound.
    static func start(_ router: Router<BasicRequestContext>, host: String, port: Int) throws -> HTTPService {
        var logger = Logger(label: "moe.serve")
        logger.logLevel = .warning
        let bound = Mutex<Result<Int, any Error>?>(nil)
        let ready = DispatchSemaphore(value: 0)
        let app = Application(router: router, configuration: .init(address: .hostname(host, port: port), serverName: "moe"),
                              onServerRunning: { channel in
                                  bound.withLock { $0 = .success(channel.localAddress?.port ?? port) }
                                  ready.signal()
                              }, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [], logger: logger))
        let task = Task.detached {
            do { try await group.run() } catch {
                bound.withLock { if $0 == nil { $0 = .failure(error) } }
                ready.signal()
                throw error
            }
        }
        ready.wait()
        switch bound.withLock({ $0 })! {
        case .success(let p): return HTTPService(group: group, task: task, port: p)
        case .failure(let e): throw ValidationError("cannot listen on \(host):\(port): \(e)")
        }
    }

    /// Stops taking connections, lets those open finish, and waits for the server to end.
    func stop() {
        let done = DispatchSemaphore(value: 0)
        let group = self.group, task = self.task
        Task.detached {
            await group.triggerGracefulShutdown()
            _ = try? await task.value
            done.signal()
        }
        done.wait()
    }
}
