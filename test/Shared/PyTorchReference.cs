using System.Diagnostics;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Runs reference scripts in a Python that has PyTorch (for cross-checks against a second framework). The interpreter is
/// the path in <see cref="PythonVariable"/> when it is set (and only that one), else the first of <c>/usr/bin/python3</c>
/// and <c>python3</c> on the PATH that can <c>import torch</c>. Found once per process; see <see cref="PyTorchConditionAttribute"/> to skip tests without it.
/// </summary>
public static class PyTorchReference
{
    /// <summary>
    /// Environment variable naming the Python interpreter to use instead of the default search (set it to a path that does
    /// not exist to see the PyTorch tests skipped).
    /// </summary>
    public const string PythonVariable = "LORA_PYTORCH_PYTHON";

    private static readonly Lazy<(string? Python, string? Version, string Reason)> Probe = new(FindPython);

    /// <summary>True when a Python that can <c>import torch</c> was found.</summary>
    public static bool IsAvailable => Probe.Value.Python is not null;

    /// <summary>The interpreter's path, or null when none has PyTorch.</summary>
    public static string? Python => Probe.Value.Python;

    /// <summary>The PyTorch version (<c>torch.__version__</c>), or null.</summary>
    public static string? TorchVersion => Probe.Value.Version;

    /// <summary>Why no interpreter was found (the candidates tried and their errors); empty when one was.</summary>
    public static string UnavailableReason => Probe.Value.Reason;

    /// <summary>
    /// The absolute path of <paramref name="relativePath"/> (e.g. <c>test/pytorch/x.py</c>) in the first directory at or
    /// above the test's output directory that contains it, so a script is found in the repository it was built from.
    /// </summary>
    /// <param name="relativePath">A path relative to the repository root.</param>
    /// <returns>The absolute path.</returns>
    /// <exception cref="FileNotFoundException">No directory above the output directory holds the file.</exception>
    public static string FindInRepository(string relativePath)
    {
        ArgumentException.ThrowIfNullOrEmpty(relativePath);
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, relativePath);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        throw new FileNotFoundException($"'{relativePath}' was not found in '{AppContext.BaseDirectory}' or any directory above it.", relativePath);
    }

    /// <summary>
    /// Runs <c>python script args…</c> with the PyTorch interpreter and waits for it. Standard output and error are
    /// captured whole; the process is killed (with its children) after <paramref name="timeout"/>.
    /// </summary>
    /// <param name="script">Path of the Python script.</param>
    /// <param name="args">Arguments, each passed as one argument (no shell quoting).</param>
    /// <param name="timeout">Wall-clock limit (default 5 minutes).</param>
    /// <returns>The exit code (−1 after a timeout), standard output and standard error.</returns>
    /// <exception cref="InvalidOperationException">No Python with PyTorch is available.</exception>
    public static (int ExitCode, string Stdout, string Stderr) Run(string script, IEnumerable<string> args, TimeSpan? timeout = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(script);
        ArgumentNullException.ThrowIfNull(args);
        var python = Python ?? throw new InvalidOperationException("No Python with PyTorch: " + UnavailableReason);
        return RunProcess(python, [script, .. args], timeout ?? TimeSpan.FromMinutes(5));
    }

    private static (string? Python, string? Version, string Reason) FindPython()
    {
        var fromVariable = Environment.GetEnvironmentVariable(PythonVariable);
        List<string> candidates = string.IsNullOrEmpty(fromVariable) ? ["/usr/bin/python3", "python3"] : [fromVariable];
        var reasons = new List<string>();
        foreach (var candidate in candidates.Distinct(StringComparer.Ordinal))
        {
            try
            {
                var (code, stdout, stderr) = RunProcess(candidate, ["-c", "import torch; print(torch.__version__)"], TimeSpan.FromMinutes(2));
                if (code == 0)
                {
                    return (candidate, stdout.Trim(), string.Empty);
                }

                var lines = stderr.Trim().Split('\n');
                reasons.Add($"{candidate}: exit code {code} ({lines[^1].Trim()})");
            }
            catch (System.ComponentModel.Win32Exception e)
            {
                reasons.Add($"{candidate}: {e.Message}");
            }
        }

        return (null, null, "no Python can 'import torch' (tried " + string.Join("; ", reasons) + $"); set {PythonVariable} or install PyTorch (Debian: python3-torch)");
    }

    private static (int ExitCode, string Stdout, string Stderr) RunProcess(string fileName, IEnumerable<string> args, TimeSpan timeout)
    {
        var start = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"Could not start '{fileName}'.");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            return (-1, stdout.Result, stderr.Result + $"\n(killed after {timeout.TotalSeconds:0} s)");
        }

        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr.Result);
    }
}
