using System.Diagnostics;
using System.Globalization;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// bench/pytorch/peer_step.py running as a child process in its <c>--serve</c> mode: one command per line, one answer
/// per line, so its steps and matmuls can be interleaved with ours. Idle (blocked on stdin) while ours run.
/// </summary>
internal sealed class PythonPeer : IDisposable
{
    public const string Python = "/usr/bin/python3";
    private readonly Process _process;

    private PythonPeer(Process process) => _process = process;

    /// <summary>The child's process id (its CPU time is the peer's share in <see cref="MachineLoad"/>).</summary>
    public int ProcessId => _process.Id;

    /// <summary>Starts the script with <paramref name="threads"/> torch (and OpenBLAS/OpenMP) threads.</summary>
    /// <param name="repoRoot">The repository root (the script is bench/pytorch/peer_step.py).</param>
    /// <param name="threads">Threads for torch, OpenMP and OpenBLAS.</param>
    /// <param name="weightsDir">Hugging Face folder with the MiniLM weights, or null for random weights.</param>
    /// <param name="batchFile">Input ids and labels written by <see cref="PeerSuite"/>, or null.</param>
    public static PythonPeer Start(string repoRoot, int threads, string? weightsDir, string? batchFile)
    {
        string script = Path.Combine(repoRoot, "bench", "pytorch", "peer_step.py");
        if (!File.Exists(Python))
            throw new InvalidOperationException($"The PyTorch peer needs {Python} with python3-torch and libopenblas0-pthread (apt-get install python3-torch libopenblas0-pthread).");
        if (!File.Exists(script)) throw new FileNotFoundException("The PyTorch peer script is missing.", script);
        var psi = new ProcessStartInfo(Python) { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
        psi.ArgumentList.Add(script);
        psi.ArgumentList.Add("--serve");
        psi.ArgumentList.Add("--threads");
        psi.ArgumentList.Add(threads.ToString(CultureInfo.InvariantCulture));
        if (weightsDir is not null)
        {
            psi.ArgumentList.Add("--weights");
            psi.ArgumentList.Add(weightsDir);
        }
        if (batchFile is not null)
        {
            psi.ArgumentList.Add("--batch");
            psi.ArgumentList.Add(batchFile);
        }
        string t = threads.ToString(CultureInfo.InvariantCulture);
        psi.Environment["OMP_NUM_THREADS"] = t;
        psi.Environment["OPENBLAS_NUM_THREADS"] = t;
        var p = Process.Start(psi) ?? throw new InvalidOperationException($"Could not start {Python} {script}.");
        var peer = new PythonPeer(p);
        string ready = peer.ReadLine();
        if (ready != "ready") throw new InvalidOperationException($"The PyTorch peer did not start: '{ready}'.");
        return peer;
    }

    /// <summary>Sends one command and returns its answer line; an "error ..." answer throws.</summary>
    public string Ask(string command)
    {
        _process.StandardInput.WriteLine(command);
        _process.StandardInput.Flush();
        string answer = ReadLine();
        if (answer.StartsWith("error", StringComparison.Ordinal))
            throw new InvalidOperationException($"PyTorch peer, command '{command}': {answer}");
        return answer;
    }

    /// <summary>Milliseconds of one step of <paramref name="variant"/> (lora, full or forward), timed inside Python.</summary>
    public double StepMs(string variant) => double.Parse(Ask("step " + variant), CultureInfo.InvariantCulture);

    /// <summary>Median milliseconds of torch.mm([m,k],[k,n]) (OpenBLAS), or of oneDNN's linear when <paramref name="oneDnn"/>.</summary>
    public double MatmulMs(int m, int k, int n, int reps, bool oneDnn = false) =>
        double.Parse(Ask(FormattableString.Invariant($"{(oneDnn ? "onednn" : "mm")} {m} {k} {n} {reps}")), CultureInfo.InvariantCulture);

    private string ReadLine() =>
        _process.StandardOutput.ReadLine() ?? throw new InvalidOperationException($"The PyTorch peer exited (code {(_process.HasExited ? _process.ExitCode : -1)}).");

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.StandardInput.WriteLine("quit");
                _process.StandardInput.Flush();
                if (!_process.WaitForExit(10_000)) _process.Kill();
            }
        }
        catch (IOException)
        {
            // The pipe is already closed: the process has ended.
        }
        _process.Dispose();
    }
}
