using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Microsoft.ML.Lora;
using Microsoft.ML.Lora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.GpuCheck;

/// <summary>
/// gpu-check [--torch-lib DIR] [--tests] [--bench] [--steps N] [--batch B] [--seq T] [--out DIR]
/// Loads libtorch from DIR (a PyTorch install's torch/lib; its libtorch_cuda.so is preloaded when present), reports
/// the CUDA state, runs the CUDA tests and times LoRA vs full fine-tuning steps. Exit code: 0 all run tests passed,
/// 1 a test failed, 2 CUDA not available (tests reported skipped), 3 libtorch could not be loaded.
/// With LORA_CUDA_TESTS_ON_CPU=1 the CPU stands in for the GPU (a dry run of the code, not a CUDA result).
/// </summary>
internal static class Program
{
    private static readonly Dictionary<string, object?> Report = new(StringComparer.Ordinal);
    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true };

    private static int Main(string[] args)
    {
        var options = Options.Parse(args);
        Directory.CreateDirectory(options.Out);
        Console.WriteLine($"gpu-check: {DateTime.UtcNow:yyyy-MM-dd HH:mm:ss} UTC, {RuntimeInformation.OSDescription}, .NET {Environment.Version}");
        Report["date_utc"] = DateTime.UtcNow.ToString("o", CultureInfo.InvariantCulture);
        Report["os"] = RuntimeInformation.OSDescription;

        int rc;
        if (!LoadTorch(options))
        {
            rc = 3;
        }
        else
        {
            bool cuda = CudaConditionStatus();
            int failed = options.Tests ? RunTests(cuda) : 0;
            if (options.Bench)
            {
                try
                {
                    Bench(options, cuda);
                }
                catch (Exception e) when (e is ExternalException or InvalidOperationException or ArgumentException)
                {
                    Console.WriteLine($"bench: FAILED {e.GetType().Name}: {e.Message}");
                    Report["bench_error"] = e.ToString();
                    failed++;
                }
            }

            rc = failed > 0 ? 1 : cuda || Tests.CudaConditionAttribute.CpuStandIn ? 0 : 2;
        }

        Report["exit_code"] = rc;
        string json = Path.Combine(options.Out, "gpu-check.json");
        File.WriteAllText(json + ".tmp", JsonSerializer.Serialize(Report, JsonOptions));
        File.Move(json + ".tmp", json, overwrite: true);
        Console.WriteLine($"gpu-check: exit {rc}; results in {json}");
        return rc;
    }

    /// <summary>Preloads libtorch from --torch-lib (CUDA first), then lets TorchSharp initialise its CUDA backend.</summary>
    private static bool LoadTorch(Options options)
    {
        if (options.TorchLib is not null)
        {
            Report["torch_lib"] = options.TorchLib;
            string cudaLib = Path.Combine(options.TorchLib, "libtorch_cuda.so");
            string[] order = File.Exists(cudaLib)
                ? ["libc10.so", "libtorch_cpu.so", "libc10_cuda.so", "libtorch_cuda.so", "libtorch.so"]
                : ["libc10.so", "libtorch_cpu.so", "libtorch.so"];
            Console.WriteLine(File.Exists(cudaLib)
                ? $"torch lib: {options.TorchLib} (has libtorch_cuda.so: preloading it)"
                : $"torch lib: {options.TorchLib} (no libtorch_cuda.so: a CPU-only libtorch)");
            foreach (var name in order)
            {
                string path = Path.Combine(options.TorchLib, name);
                if (!File.Exists(path))
                {
                    continue;
                }

                try
                {
                    NativeLibrary.Load(path);
                    Console.WriteLine($"  loaded {name}");
                }
                catch (DllNotFoundException e)
                {
                    Console.WriteLine($"  FAILED to load {name}: {e.Message}");
                    Report["load_error"] = $"{name}: {e.Message}";
                    return false;
                }
            }
        }

        try
        {
            // Loads torch_cuda (already resident when preloaded) and LibTorchSharp, which binds to the libtorch in
            // memory. False (not an exception) when no CUDA device or a CPU-only libtorch.
            bool ok = torch.TryInitializeDeviceType(DeviceType.CUDA);
            Console.WriteLine($"TorchSharp {typeof(torch).Assembly.GetName().Version} (built for libtorch {torch.__version__}); CUDA backend initialised: {ok}");
            using var a = torch.ones(2, 2);
            Console.WriteLine($"  CPU smoke test: ones(2,2)·ones(2,2) sum = {a.matmul(a).sum().item<float>()} (expected 8)");
            Report["torchsharp_version"] = typeof(torch).Assembly.GetName().Version?.ToString();
            Report["libtorch_expected"] = torch.__version__;
            return true;
        }
        catch (Exception e) when (e is NotSupportedException or TypeInitializationException or DllNotFoundException or EntryPointNotFoundException or InvalidOperationException)
        {
            Console.WriteLine($"FAILED to initialise TorchSharp: {e.GetType().Name}: {e.Message}");
            Console.WriteLine("  (see ldd -r / nm -D output from gpu-check.sh for the missing symbols)");
            Report["load_error"] = e.ToString();
            return false;
        }
    }

    private static bool CudaConditionStatus()
    {
        bool available = Tests.CudaConditionAttribute.IsCudaAvailable();
        Report["cuda_available"] = available;
        if (available)
        {
            int count = torch.cuda.device_count();
            Console.WriteLine($"CUDA available: {count} device(s); cuDNN: {torch.cuda.is_cudnn_available()}");
            Report["cuda_device_count"] = count;
        }
        else
        {
            Console.WriteLine(Tests.CudaConditionAttribute.CpuStandIn
                ? "CUDA not available; LORA_CUDA_TESTS_ON_CPU=1: the CPU stands in for the GPU (dry run of the code only)"
                : "CUDA not available: CUDA tests are reported as skipped");
        }

        return available;
    }

    /// <summary>Runs every [TestMethod] of every [TestClass] in this assembly (DataRows expanded), honouring the CUDA condition.</summary>
    private static int RunTests(bool cuda)
    {
        int passed = 0, failed = 0, skipped = 0;
        var results = new List<Dictionary<string, object?>>();
        foreach (var type in typeof(Program).Assembly.GetTypes()
                     .Where(t => t.GetCustomAttribute<TestClassAttribute>() is not null).OrderBy(t => t.FullName, StringComparer.Ordinal))
        {
            var condition = type.GetCustomAttributes<ConditionBaseAttribute>(inherit: false).FirstOrDefault(c => !c.IsConditionMet);

            // [ClassInitialize] (its TestContext argument gets null: the linked tests do not use it) and [ClassCleanup],
            // [TestInitialize] and [TestCleanup], as MSTest runs them.
            string? classError = null;
            if (condition is null)
            {
                classError = Invoke(type.GetMethods(BindingFlags.Public | BindingFlags.Static).Where(m => m.GetCustomAttribute<ClassInitializeAttribute>() is not null),
                    null, m => m.GetParameters().Length == 1 ? [null] : []);
            }

            foreach (var method in type.GetMethods().Where(m => m.GetCustomAttribute<TestMethodAttribute>() is not null))
            {
                var rows = method.GetCustomAttributes<DataRowAttribute>().Select(r => r.Data).ToList();
                if (rows.Count == 0)
                {
                    rows.Add([]);
                }

                foreach (var row in rows)
                {
                    string name = $"{type.Name}.{method.Name}" + (row.Length > 0 ? "(" + string.Join(", ", row) + ")" : "");
                    string outcome;
                    string? message = null;
                    var watch = Stopwatch.StartNew();
                    if (condition is not null)
                    {
                        outcome = "skipped";
                        message = condition.IgnoreMessage;
                        skipped++;
                    }
                    else if (classError is not null)
                    {
                        outcome = "failed";
                        message = "[ClassInitialize] failed: " + classError;
                        failed++;
                    }
                    else
                    {
                        var instance = Activator.CreateInstance(type);
                        message = Invoke(type.GetMethods().Where(m => m.GetCustomAttribute<TestInitializeAttribute>() is not null), instance, _ => [])
                            ?? Invoke([method], instance, _ => row)
                            ?? Invoke(type.GetMethods().Where(m => m.GetCustomAttribute<TestCleanupAttribute>() is not null), instance, _ => []);
                        (instance as IDisposable)?.Dispose();
                        outcome = message is null ? "passed" : "failed";
                        if (message is null)
                        {
                            passed++;
                        }
                        else
                        {
                            failed++;
                        }
                    }

                    Console.WriteLine($"  {outcome.ToUpperInvariant(),-7} {name} [{watch.ElapsedMilliseconds} ms]" + (outcome == "failed" ? "\n          " + message?.Replace("\n", "\n          ", StringComparison.Ordinal) : ""));
                    results.Add(new() { ["test"] = name, ["outcome"] = outcome, ["ms"] = watch.ElapsedMilliseconds, ["message"] = message });
                }
            }

            if (condition is null && classError is null)
            {
                string? cleanupError = Invoke(type.GetMethods(BindingFlags.Public | BindingFlags.Static).Where(m => m.GetCustomAttribute<ClassCleanupAttribute>() is not null), null, _ => []);
                if (cleanupError is not null)
                {
                    Console.WriteLine($"  FAILED  {type.Name} [ClassCleanup]\n          {cleanupError}");
                    results.Add(new() { ["test"] = type.Name + ".[ClassCleanup]", ["outcome"] = "failed", ["ms"] = 0L, ["message"] = cleanupError });
                    failed++;
                }
            }
        }

        Console.WriteLine($"tests: {passed} passed, {failed} failed, {skipped} skipped" + (cuda ? "" : " (no CUDA)"));
        Report["tests"] = results;
        Report["tests_summary"] = new { passed, failed, skipped };
        return failed;
    }

    /// <summary>Invokes each method in order; the first failure as "Type: message", or null when all returned.</summary>
    private static string? Invoke(IEnumerable<MethodInfo> methods, object? instance, Func<MethodInfo, object?[]> arguments)
    {
        foreach (var method in methods)
        {
            try
            {
                method.Invoke(instance, arguments(method));
            }
            catch (TargetInvocationException e) when (e.InnerException is not null)
            {
                return e.InnerException.GetType().Name + ": " + e.InnerException.Message;
            }
        }

        return null;
    }

    /// <summary>
    /// One optimizer step (forward, backward, AdamW) of a MiniLM-L6-shaped BERT classifier with random weights:
    /// LoRA r=8 α=16 on query,value (+ the head) vs full fine-tuning, float32; and LoRA over a bfloat16 frozen base.
    /// </summary>
    private static void Bench(Options options, bool cuda)
    {
        var device = cuda ? CUDA : CPU;
        bool small = !cuda;
        int batch = small ? 2 : options.Batch, seq = small ? 16 : options.Seq, steps = small ? 2 : options.Steps, warmup = small ? 1 : 3;
        Console.WriteLine($"bench: device {device.type}, batch {batch} × {seq} tokens, {warmup} warm-up + {steps} timed steps" + (small ? " (no CUDA: a tiny CPU run to exercise the code only)" : ""));
        var rows = new List<Dictionary<string, object?>>();
        foreach (var variant in new[] { "lora_qv_r8_fp32", "full_fp32", "lora_qv_r8_bf16_base" })
        {
            double ms = TimeSteps(variant, device, batch, seq, steps, warmup, out long trainable, out long total);
            double tokensPerSecond = batch * (double)seq / (ms / 1000.0);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {variant,-22} {ms,9:F2} ms/step  {tokensPerSecond,12:F0} tokens/s  trainable {trainable:N0} of {total:N0}"));
            rows.Add(new() { ["variant"] = variant, ["ms_per_step"] = ms, ["tokens_per_s"] = tokensPerSecond, ["trainable"] = trainable, ["total"] = total });
        }

        double lora = (double)rows.First(r => (string)r["variant"]! == "lora_qv_r8_fp32")["ms_per_step"]!;
        double full = (double)rows.First(r => (string)r["variant"]! == "full_fp32")["ms_per_step"]!;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  full / LoRA step time: {full / lora:F2}"));
        Report["bench"] = new { device = device.type.ToString(), batch, seq, steps, warmup, rows, full_over_lora = full / lora };
    }

    private static double TimeSteps(string variant, Device device, int batch, int seq, int steps, int warmup, out long trainable, out long total)
    {
        manual_seed(1234);
        var config = new BertConfig
        {
            VocabSize = 30522, HiddenSize = 384, NumHiddenLayers = 6, NumAttentionHeads = 12, IntermediateSize = 1536,
            MaxPositionEmbeddings = 512, HiddenDropoutProb = 0.1, AttentionProbsDropoutProb = 0.1,
        };
        using var model = new BertForSequenceClassification(new BertModel(config), 2, PoolingMode.Mean, dropout: 0.1);
        model.to(device);
        if (variant.StartsWith("lora", StringComparison.Ordinal))
        {
            if (variant.EndsWith("bf16_base", StringComparison.Ordinal))
            {
                model.Bert.to(ScalarType.BFloat16); // frozen base in bfloat16; the LoRA factors injected next stay float32
            }

            lora.inject_adapter_in_model(new LoraConfig { r = 8, lora_alpha = 16, target_modules = ["query", "value"] }, model.Bert);
            lora.mark_only_lora_as_trainable(model);
            foreach (var (name, p) in model.named_parameters().Where(p => p.name.StartsWith("classifier.", StringComparison.Ordinal)))
            {
                p.requires_grad = true;
            }
        }

        var parameters = model.parameters().Where(p => p.requires_grad).ToList();
        trainable = parameters.Sum(p => p.numel());
        total = model.parameters().Sum(p => p.numel());
        using var optimizer = optim.AdamW(parameters, lr: 1e-4);
        using var ids = randint(1000, 30000, [batch, seq], dtype: ScalarType.Int64, device: device);
        using var mask = ones([batch, seq], dtype: ScalarType.Int64, device: device);
        using var types = zeros([batch, seq], dtype: ScalarType.Int64, device: device);
        using var labels = randint(0, 2, [batch], dtype: ScalarType.Int64, device: device);
        model.train();
        var watch = new Stopwatch();
        for (int i = 0; i < warmup + steps; i++)
        {
            if (i == warmup)
            {
                Sync(device);
                watch.Start();
            }

            using var scope = NewDisposeScope();
            optimizer.zero_grad();
            var logits = model.call(ids, mask, types);
            nn.functional.cross_entropy(logits.to(ScalarType.Float32), labels).backward();
            optimizer.step();
        }

        Sync(device);
        return watch.Elapsed.TotalMilliseconds / steps;
    }

    private static void Sync(Device device)
    {
        if (device.type == DeviceType.CUDA)
        {
            torch.cuda.synchronize(device);
        }
    }

    private sealed record Options(string? TorchLib, bool Tests, bool Bench, int Steps, int Batch, int Seq, string Out)
    {
        public static Options Parse(string[] args)
        {
            string? torchLib = null, output = "gpu-check-out";
            bool tests = false, bench = false;
            int steps = 20, batch = 32, seq = 128;
            for (int i = 0; i < args.Length; i++)
            {
                string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.", nameof(args));
                switch (args[i])
                {
                    case "--torch-lib": torchLib = Path.GetFullPath(Next()); break;
                    case "--tests": tests = true; break;
                    case "--bench": bench = true; break;
                    case "--steps": steps = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case "--batch": batch = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case "--seq": seq = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case "--out": output = Next(); break;
                    default: throw new ArgumentException($"Unknown argument '{args[i]}'. Use --torch-lib DIR, --tests, --bench, --steps N, --batch B, --seq T, --out DIR.", nameof(args));
                }
            }

            if (!tests && !bench)
            {
                tests = bench = true;
            }

            return new Options(torchLib, tests, bench, steps, batch, seq, output!);
        }
    }
}
